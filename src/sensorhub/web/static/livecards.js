// The live cards of /capteurs as data: a record per card, found through Maps (never a search over all cards),
// messages applied to the record at once and to the DOM once per animation frame, charts drawn only for the
// cards in view once the fleet is larger than `everyChartUpTo` (an IntersectionObserver creates them when a card
// comes into view and drops them when it leaves, so 2,000 cards do not hold 2,000 charts); a small fleet has
// all its charts drawn, as it always had.

import {formatTime, t} from './common.js';

const CHART_POINTS = 10;
// A chart is redrawn at most this often (a device at 20 readings/s would otherwise cost a redraw per frame);
// the value next to it changes at every frame.
const CHART_REDRAW_MS = 500;
// Time a frame may spend creating or redrawing charts, in a large fleet: the charts in view fall due together
// when one jumps down the list, and a chart's creation lays the page out. A frame draws charts until this is
// spent (one at least); the others follow in the next frames. A small fleet draws all its charts at once, as it
// always did. The long tasks that set it are in docs/performance.md ("Finishing issue 14", "The live feed").
const CHART_BUDGET_MS = 12;
// Cards a little outside the viewport get their chart already, so that scrolling shows it drawn.
const CHART_MARGIN = '300px 0px';

// The browser's own time zone, in the page's language.
export function timeLabel(date) {
  return formatTime(date);
}

function readPoints(card) {
  try {
    const points = JSON.parse(card.dataset.light || '[]');
    return points.map((point) => ({at: Date.parse(point.at), value: point.value}));
  } catch {
    return [];
  }
}

function chartConfig(points) {
  return {
    type: 'line',
    data: {
      labels: points.map((point) => timeLabel(new Date(point.at))),
      datasets: [{
        label: t('chart.light'),
        data: points.map((point) => point.value),
        borderColor: '#0f766e',
        backgroundColor: 'rgba(15, 118, 110, 0.12)',
        fill: true,
        tension: 0.3,
        pointRadius: 3,
      }],
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: {
        y: {min: 0, max: 100, ticks: {stepSize: 25, callback: (value) => t('percent', {value})}},
        x: {ticks: {maxRotation: 0, autoSkip: true, maxTicksLimit: 4}},
      },
      plugins: {
        legend: {display: false},
        tooltip: {callbacks: {label: (context) => t('percent', {value: context.parsed.y})}},
      },
    },
  };
}

const dateOf = (text) => {
  const time = Date.parse(text || '');
  return Number.isNaN(time) ? 0 : time;
};

// One card's state. `led`, `button` and `light` are what the next frame writes into the card.
class Record {
  constructor(card) {
    this.card = card;
    this.points = readPoints(card);
    this.led = card.querySelector('[data-led-state]')?.dataset.value === '1';
    this.button = card.querySelector('[data-button-state]')?.dataset.value === '1';
    const last = this.points.length ? this.points[this.points.length - 1].at : 0;
    this.lastSeen = Math.max(dateOf(card.dataset.lastSeen), last);
    this.chart = null;
    this.chartStale = false;
    this.drawnAt = 0;
    this.inView = false;
    this.dirty = new Set(); // 'led' | 'button' | 'light'
  }
}

export class LiveCards {
  constructor(container, {onFrame = () => {}, onLed = () => {}, everyChartUpTo = 0} = {}) {
    this.container = container;
    this.everyChartUpTo = everyChartUpTo;
    this.byId = new Map(); // device id -> Record
    this.bySessionName = new Map(); // session name -> Record
    this.dirty = new Set(); // records with something to write
    this.chartQueue = new Set(); // records whose chart is to be created, a few per frame
    this.onFrame = onFrame; // the view (order, filter, counts) when cards came or went
    this.onLed = onLed;
    this.changed = false;
    this.frame = 0;
    this.chartTimer = 0;
    this.observer = 'IntersectionObserver' in window
      ? new IntersectionObserver((entries) => this.sawIntersections(entries), {rootMargin: CHART_MARGIN})
      : null;
  }

  get size() {
    return this.byId.size;
  }

  records() {
    return this.byId.values();
  }

  byCard(card) {
    const record = this.byId.get(card.dataset.id);
    return record && record.card === card ? record : null;
  }

  // Register a card that is in the container (or is being put there).
  add(card) {
    const record = new Record(card);
    this.byId.set(card.dataset.id, record);
    this.bySessionName.set(card.dataset.sessionName, record);
    if (this.observer) this.observer.observe(card);
    this.structureChanged();
    return record;
  }

  // Put `card` in place of `old` (same device, newer state).
  replace(old, card) {
    this.forget(old);
    old.card.replaceWith(card);
    return this.add(card);
  }

  remove(record) {
    this.forget(record);
    record.card.remove();
    this.structureChanged();
  }

  forget(record) {
    if (this.observer) this.observer.unobserve(record.card);
    this.dropChart(record);
    this.dirty.delete(record);
    this.chartQueue.delete(record);
    if (this.byId.get(record.card.dataset.id) === record) this.byId.delete(record.card.dataset.id);
    if (this.bySessionName.get(record.card.dataset.sessionName) === record) {
      this.bySessionName.delete(record.card.dataset.sessionName);
    }
  }

  // -- messages: the record now, the card at the next frame -------------------------------------------------

  setLed(record, on) {
    record.led = on;
    this.touch(record, 'led');
  }

  setButton(record, pressed) {
    record.button = pressed;
    this.touch(record, 'button');
  }

  addLight(record, value) {
    record.points.push({at: Date.now(), value});
    if (record.points.length > CHART_POINTS) record.points.splice(0, record.points.length - CHART_POINTS);
    this.touch(record, 'light');
  }

  // A card out of view keeps what changed in its record and asks for no frame: with 2,000 devices, nearly
  // every message is for one, and a frame computes the intersections and lifecycle of the whole page. It is
  // written when it comes into view (sawIntersections).
  touch(record, what) {
    record.lastSeen = Date.now();
    record.dirty.add(what);
    if (!this.writesNow(record)) return;
    this.dirty.add(record);
    this.schedule();
  }

  writesNow(record) {
    return record.inView || !this.observer || this.size <= this.everyChartUpTo;
  }

  structureChanged() {
    this.changed = true;
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  // One frame's worth of DOM writes.
  flush() {
    if (this.frame) cancelAnimationFrame(this.frame); // called directly (at start) rather than by the frame
    this.frame = 0;
    const everyCard = !this.observer || this.size <= this.everyChartUpTo;
    if (this.changed) {
      this.changed = false;
      this.onFrame();
      this.drawWanted();
      // A fleet that became small writes every card, also those whose changes waited out of view.
      if (everyCard) for (const record of this.records()) if (record.dirty.size) this.dirty.add(record);
    }
    const now = performance.now();
    const budgetEnds = everyCard ? Infinity : now + CHART_BUDGET_MS;
    let chartsWaiting = false;
    let chartsDrawn = 0;
    let chartsDue = false;
    const spent = () => chartsDrawn > 0 && performance.now() >= budgetEnds;
    for (const record of this.chartQueue) {
      if (spent()) break;
      this.chartQueue.delete(record);
      if (!record.chart && this.wantsChart(record)) {
        this.drawChart(record);
        chartsDrawn += 1;
      }
    }
    if (this.chartQueue.size) chartsDue = true;
    for (const record of this.dirty) {
      if (!everyCard && !record.inView) { // written when it comes into view (sawIntersections)
        this.dirty.delete(record);
        continue;
      }
      const {card} = record;
      if (record.dirty.has('light') && record.chart) record.chartStale = true;
      if (record.chartStale) {
        if (now - record.drawnAt < CHART_REDRAW_MS) chartsWaiting = true;
        else if (spent()) chartsDue = true;
        else {
          this.refreshChart(record);
          chartsDrawn += 1;
        }
      }
      if (record.dirty.has('led')) this.onLed(record, record.led);
      if (record.dirty.has('button')) {
        const state = card.querySelector('[data-button-state]');
        state.dataset.value = record.button ? '1' : '0';
        state.textContent = record.button ? t('button.pressed') : t('button.released');
      }
      if (record.dirty.has('light') && record.points.length) {
        const last = record.points[record.points.length - 1];
        card.querySelector('[data-light-value]').textContent = t('percent', {value: last.value});
      }
      record.dirty.clear();
      if (!record.chartStale) this.dirty.delete(record);
    }
    if (chartsDue) this.schedule(); // the next frame draws the next few
    else if (chartsWaiting && !this.chartTimer) {
      this.chartTimer = setTimeout(() => {
        this.chartTimer = 0;
        this.schedule();
      }, CHART_REDRAW_MS / 2);
    }
  }

  // -- charts for the cards in view ------------------------------------------------------------------------

  wantsChart(record) {
    return !this.observer || record.inView || this.size <= this.everyChartUpTo;
  }

  // After cards came or went: a chart for every card that should have one, none for the others.
  drawWanted() {
    for (const record of this.records()) {
      if (!this.wantsChart(record)) this.dropChart(record);
      else if (!record.chart) this.chartQueue.add(record);
    }
  }

  sawIntersections(entries) {
    for (const entry of entries) {
      const record = this.byCard(entry.target);
      if (!record) continue;
      record.inView = entry.isIntersecting;
      if (!this.wantsChart(record)) this.dropChart(record);
      else if (record.chart) this.drawChart(record);
      else {
        this.chartQueue.add(record);
        this.schedule();
      }
      if (record.inView && record.dirty.size) { // what came while it was out of view
        this.dirty.add(record);
        this.schedule();
      }
    }
  }

  drawChart(record) {
    if (record.chart) {
      this.refreshChart(record);
      return;
    }
    const canvas = record.card.querySelector('[data-chart]');
    if (!canvas || !window.Chart) return;
    record.chart = new window.Chart(canvas, chartConfig(record.points));
    record.chartStale = false;
    record.drawnAt = performance.now();
  }

  refreshChart(record) {
    const {chart, points} = record;
    record.chartStale = false;
    record.drawnAt = performance.now();
    chart.data.labels = points.map((point) => timeLabel(new Date(point.at)));
    chart.data.datasets[0].data = points.map((point) => point.value);
    chart.update('none');
  }

  dropChart(record) {
    if (record.chart) record.chart.destroy();
    record.chart = null;
    record.chartStale = false;
  }
}
