// /appareil/<id>: one device over time. The light is a line (its mean, with the min–max band once aggregated).
// The LED and the button are on/off bands, one above the other, filled while on; once aggregated, the share of
// each bucket spent on (%). The server picks the bucket (raw, 1 minute, 1 hour) so that a range never gives more
// than 1,000 points. A preset range starts at the device's first reading when that is later (a new device's
// readings would otherwise be a sliver at the right edge), and the time axis has as many labels as fit.
// Times on the axis are the browser's; the tooltip gives the UTC time too.
import {formatLocal, formatUtc, pageLocale, seriesLabel, t} from './common.js';

const root = document.querySelector('[data-device-page]');
const deviceId = root.dataset.deviceId;
// The width of each aggregated bucket, as the server rolls them up (sensorhub.buckets): name -> milliseconds.
const BUCKET_MS = JSON.parse(root.dataset.bucketMs);
const KIND_LABELS = {led: t('device.led'), button: t('device.button')};
const MINIMUM = t('device.min');
// The axis's day labels in the page's language: day then month (05/04) or month then day (04/05).
const DAY_FORMAT = new Intl.DateTimeFormat(pageLocale(), {day: '2-digit', month: '2-digit'}).formatToParts(new Date())
  .filter((part) => part.type !== 'literal').map((part) => (part.type === 'day' ? 'dd' : 'MM')).join('/');
const COLORS = {light: '#0f766e', band: 'rgba(15, 118, 110, 0.18)', led: '#a16207', button: '#4338ca'};
const summary = document.querySelector('[data-summary]');
const errorBox = document.querySelector('[data-chart-error]');
const csvLink = document.querySelector('[data-csv]');
const customForm = document.querySelector('[data-custom-range]');
const rangeButtons = [...document.querySelectorAll('[data-range]')];
// The ranges offered, as the server wrote them on their buttons (web/pages.py RANGES): key -> milliseconds.
const SPANS = Object.fromEntries(rangeButtons.filter((button) => button.dataset.spanMs)
  .map((button) => [button.dataset.range, Number(button.dataset.spanMs)]));
const notes = {light: document.querySelector('[data-note="light"]'), state: document.querySelector('[data-note="state"]')};
const charts = {};
let generation = 0;
let current = null; // {from: Date, to: Date, key: a range's key (data-range) or 'custom'}

const two = (n) => String(n).padStart(2, '0');

// The value of an <input type="datetime-local"> for a date, in the browser's time zone.
function localInput(date) {
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())}T`
    + `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

function pressRange(key) {
  for (const button of rangeButtons) button.setAttribute('aria-pressed', String(button.dataset.range === key));
}

async function fetchSeries(kind, from, to) {
  const params = new URLSearchParams({kind, from: from.toISOString(), to: to.toISOString(), bucket: 'auto'});
  const response = await fetch(`/api/devices/${deviceId}/readings?${params}`, {headers: {Accept: 'application/json'}});
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || t('http.error', {status: response.status}));
  return body;
}

const at = (point) => Date.parse(point.at);

function lightDatasets(series) {
  if (series.bucket === 'raw') {
    return [{
      label: t('device.light'), data: series.points.map((p) => ({x: at(p), y: p.value})), borderColor: COLORS.light,
      backgroundColor: COLORS.light, borderWidth: 2, pointRadius: series.points.length > 150 ? 0 : 2, tension: 0,
    }];
  }
  const line = (key) => series.points.map((p) => ({x: at(p), y: p[key]}));
  return [
    {label: MINIMUM, data: line('min'), borderWidth: 0, pointRadius: 0, fill: false, borderColor: 'transparent'},
    {label: t('device.minmax'), data: line('max'), borderWidth: 0, pointRadius: 0, fill: '-1', borderColor: 'transparent',
      backgroundColor: COLORS.band},
    {label: t('device.avg'), data: line('avg'), borderColor: COLORS.light, backgroundColor: COLORS.light, borderWidth: 2,
      pointRadius: 0},
  ];
}

// Raw states are drawn as bands on a 0–100 scale: the LED's between 55 (off) and 95 (on), the button's between 5
// and 45, each filled down to its own off line.
const BANDS = {led: {off: 55, on: 95, middle: 75, name: t('device.bandled')},
  button: {off: 5, on: 45, middle: 25, name: t('device.bandbutton')}};

// A step series: each value holds until the next one; the last one until the end of the range (or now).
function stateDataset(series, until) {
  const points = [];
  const band = BANDS[series.kind];
  if (series.bucket === 'raw') {
    const y = (value) => (value ? band.on : band.off);
    if (series.previous) points.push({x: Date.parse(series.from), y: y(series.previous.value)});
    for (const p of series.points) points.push({x: at(p), y: y(p.value)});
  } else {
    const width = BUCKET_MS[series.bucket];
    for (const p of series.points) {
      points.push({x: at(p), y: Math.min(100, Math.round((p.on_seconds * 1000 / width) * 1000) / 10)});
    }
  }
  if (points.length) points.push({x: until, y: points[points.length - 1].y});
  const raw = series.bucket === 'raw';
  return {
    // Chart.js's 'before': each value holds (horizontally) until the next point, where the line steps.
    label: KIND_LABELS[series.kind], data: points, stepped: 'before', borderColor: COLORS[series.kind],
    backgroundColor: raw ? `${COLORS[series.kind]}55` : COLORS[series.kind], borderWidth: 2, pointRadius: 0,
    fill: raw ? {value: band.off} : false, sensorhubBand: raw ? series.kind : null,
  };
}

// The y axis of the raw states: a label in the middle of each band, none elsewhere.
function bandTick(value) {
  const found = Object.values(BANDS).find((band) => band.middle === value);
  return found ? found.name : '';
}

// Where the time axis starts: `from`, or for a preset range the first reading when it is later (and nothing came
// before it in the range).
function axisStart(from, key, seriesList) {
  if (key === 'custom' || seriesList.some((series) => series.previous)) return from;
  const firsts = seriesList.filter((series) => series.points.length).map((series) => at(series.points[0]));
  if (!firsts.length) return from;
  const first = Math.min(...firsts);
  const margin = (Date.now() - first) * 0.02;
  return new Date(Math.max(from.getTime(), first - margin));
}

// As many time labels as fit: about one per 90 px of chart (a phone shows 4, not 15 run together).
function tickLimit(name) {
  const canvas = document.querySelector(`[data-chart="${name}"]`);
  const width = canvas?.parentElement?.clientWidth || canvas?.clientWidth || 600;
  return Math.max(2, Math.min(8, Math.floor(width / 90)));
}

function chartOptions(from, to, yTitle, legendFilter, name, bands = false) {
  return {
    animation: false,
    responsive: true,
    maintainAspectRatio: false,
    parsing: false,
    normalized: true,
    interaction: {mode: 'nearest', axis: 'x', intersect: false},
    scales: {
      x: {
        type: 'time', min: from.getTime(), max: to.getTime(),
        // Beyond a day and a half, one tick a day (at midnight, browser time) rather than every 21 hours.
        time: {unit: to - from > 36 * 3600e3 ? 'day' : undefined, displayFormats: {millisecond: 'HH:mm:ss.SSS', second: 'HH:mm:ss', minute: 'HH:mm', hour: 'HH:mm',
          day: DAY_FORMAT, week: DAY_FORMAT, month: 'MM/yyyy', quarter: 'MM/yyyy', year: 'yyyy'}},
        ticks: {maxRotation: 0, autoSkip: true, autoSkipPadding: 12, maxTicksLimit: tickLimit(name)},
      },
      y: bands
        ? {min: 0, max: 100, title: {display: true, text: yTitle}, ticks: {stepSize: 25, callback: bandTick},
          grid: {display: false}}
        : {min: 0, max: 100, title: {display: true, text: yTitle}, ticks: {callback: (value) => t('percent', {value})}},
    },
    plugins: {
      legend: {labels: {filter: legendFilter}},
      tooltip: {
        callbacks: {
          title: (items) => {
            const date = new Date(items[0].parsed.x);
            return [formatLocal(date), formatUtc(date)];
          },
          label: (item) => (item.dataset.sensorhubBand
            ? `${item.dataset.label}${t(' : ')}${t(item.parsed.y === BANDS[item.dataset.sensorhubBand].on ? 'device.yes' : 'device.no')}`
            : `${item.dataset.label}${t(' : ')}${t('percent', {value: item.parsed.y})}`),
        },
      },
    },
  };
}

function draw(name, datasets, options) {
  if (charts[name]) charts[name].destroy();
  const canvas = document.querySelector(`[data-chart="${name}"]`);
  charts[name] = new window.Chart(canvas, {type: 'line', data: {datasets}, options});
}

function describe(series) {
  return seriesLabel(series.points.length, series.bucket);
}

async function load(from, to, key) {
  const mine = ++generation;
  current = {from, to, key};
  pressRange(key);
  root.dataset.state = 'loading';
  summary.textContent = t('device.loading');
  errorBox.hidden = true;
  const params = new URLSearchParams({device: deviceId, from: from.toISOString(), to: to.toISOString()});
  csvLink.href = `/api/export.csv?${params}`;
  const address = new URL(window.location.href);
  address.search = key === 'custom'
    ? new URLSearchParams({du: from.toISOString(), au: to.toISOString()}).toString()
    : new URLSearchParams({periode: key}).toString();
  window.history.replaceState(null, '', address);
  let light;
  let led;
  let button;
  try {
    [light, led, button] = await Promise.all(['light', 'led', 'button'].map((kind) => fetchSeries(kind, from, to)));
  } catch (err) {
    if (mine !== generation) return;
    errorBox.textContent = t('device.unavailable', {error: err.message});
    errorBox.hidden = false;
    summary.textContent = '';
    root.dataset.state = 'error';
    return;
  }
  if (mine !== generation) return;
  if (!window.Chart || !window.Chart._adapters?._date?.prototype?.formats) {
    errorBox.textContent = t('device.nolibrary');
    errorBox.hidden = false;
    root.dataset.state = 'error';
    return;
  }
  // The last state holds until now, or until the device was last heard of if it is offline.
  const heard = root.dataset.online === '1' ? Date.now() : Date.parse(root.dataset.lastSeen);
  const until = Math.min(to.getTime(), heard);
  const start = axisStart(from, key, [light, led, button]);
  const raw = led.bucket === 'raw' && button.bucket === 'raw';
  draw('light', lightDatasets(light), chartOptions(start, to, t('device.axislight'), (item) => item.text !== MINIMUM, 'light'));
  draw('state', [stateDataset(led, until), stateDataset(button, until)],
    chartOptions(start, to, raw ? t('device.axisraw') : t('device.axisshare'), () => true, 'state', raw));
  notes.light.textContent = light.bucket === 'raw' ? '' : t('device.band');
  notes.state.textContent = raw
    ? t('device.rawnote')
    : t('device.sharenote');
  const text = t('device.range', {
    from: formatLocal(from), to: formatLocal(to), light: describe(light), led: describe(led), button: describe(button),
  });
  summary.textContent = text;
  for (const canvas of document.querySelectorAll('[data-chart]')) canvas.dataset.bucket = light.bucket;
  root.dataset.bucket = light.bucket;
  root.dataset.points = String(light.points.length);
  root.dataset.state = 'ready';
}

function loadSpan(key) {
  const to = new Date();
  load(new Date(to.getTime() - SPANS[key]), to, key);
}

for (const button of rangeButtons) {
  button.addEventListener('click', () => {
    const key = button.dataset.range;
    if (key === 'custom') {
      customForm.hidden = false;
      if (current) {
        customForm.elements.from.value = localInput(current.from);
        customForm.elements.to.value = localInput(current.to);
      }
      customForm.elements.from.focus();
      return;
    }
    customForm.hidden = true;
    loadSpan(key);
  });
}

customForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const from = new Date(customForm.elements.from.value);
  const to = new Date(customForm.elements.to.value);
  if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime()) || from >= to) {
    errorBox.textContent = t('device.order');
    errorBox.hidden = false;
    return;
  }
  load(from, to, 'custom');
});

// Charts need the deferred Chart.js and its date adapter: modules run after deferred scripts.
const query = new URLSearchParams(window.location.search);
const from = query.get('du') ? new Date(query.get('du')) : null;
const to = query.get('au') ? new Date(query.get('au')) : null;
if (from && to && !Number.isNaN(from.getTime()) && !Number.isNaN(to.getTime()) && from < to) {
  customForm.hidden = false;
  customForm.elements.from.value = localInput(from);
  customForm.elements.to.value = localInput(to);
  load(from, to, 'custom');
} else {
  loadSpan(root.dataset.period); // one of the ranges: the server checked `?periode=`
}
