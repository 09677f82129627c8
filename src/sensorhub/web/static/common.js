// Shared by /capteurs and /historique: CSRF-protected POSTs, the layout toggle, the filter bar and renaming.
// Device data only ever reaches the page as server-escaped HTML or through textContent / dataset.

const LAYOUT_KEY = 'sensorhub.layout';

// The page's strings in its language, from the server's catalog (web/scriptstrings.py, rendered by base.html):
// `t('live.lost')`, `t('http.error', {status: 404})` (`%(name)s` placeholders and `%%`, as in Python). Read on
// first use, like the protocol below.
let strings = null;
export function t(key, values) {
  if (strings === null) {
    const element = document.getElementById('sensorhub-strings');
    strings = element ? JSON.parse(element.textContent) : {};
  }
  const text = strings[key] ?? key;
  if (values === undefined) return text;
  return text.replace(/%\((\w+)\)s|%%/g, (match, name) => (name === undefined ? '%' : String(values[name])));
}

// The page's language (<html lang>, the server's choice), and the locale its dates and numbers are written in:
// the browser's own variant of that language when it has one (en-GB or en-US, as its date inputs show them).
export function pageLanguage() {
  return document.documentElement.lang || 'fr';
}

export function pageLocale() {
  const language = pageLanguage();
  const tags = typeof navigator === 'undefined' ? [] : navigator.languages || [navigator.language];
  const own = tags.find((tag) => tag && tag.split('-')[0] === language);
  return own || language;
}

// The server's protocol module as data (channels, QoS, the name rule and its messages in the page's language), rendered into
// every page by base.html: nothing of it is copied here. Read on first use (the module also loads without a page).
let protocolData = null;
export function protocol() {
  if (protocolData === null) protocolData = JSON.parse(document.getElementById('sensorhub-protocol').textContent);
  return protocolData;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : '';
}

// Send a JSON body (none: `payload` undefined) with `method`; always resolves to {status, body} (status 0 when the
// server cannot be reached), the CSRF header included.
export async function sendJSON(method, url, payload) {
  let response;
  try {
    response = await fetch(url, {
      method,
      credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRFToken': csrfToken()},
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
  } catch {
    return {status: 0, body: {error: t('server.silent')}};
  }
  let body;
  try {
    body = await response.json();
  } catch {
    body = {error: t('server.unexpected', {status: response.status})};
  }
  return {status: response.status, body};
}

// POST a JSON body (sendJSON).
export function postJSON(url, payload) {
  return sendJSON('POST', url, payload);
}

// The layout the visitor chose, or null if they never did.
function readLayout() {
  try {
    const stored = localStorage.getItem(LAYOUT_KEY);
    return stored === 'list' || stored === 'grid' ? stored : null;
  } catch {
    return null;
  }
}

function storeLayout(layout) {
  try {
    localStorage.setItem(LAYOUT_KEY, layout);
  } catch {
    // private browsing: the choice lasts until the page is left
  }
}

// The layout button: grid <-> list, remembered in localStorage for every page. Its label and icon name the
// layout it switches to; aria-pressed is true while the list is shown. Until the visitor chooses, the page may
// suggest one (/capteurs suggests the list for a large fleet): the returned object's `suggest(layout)`.
export function initLayoutToggle() {
  const containers = document.querySelectorAll('[data-cards]');
  const buttons = document.querySelectorAll('[data-layout-toggle]');
  const chosen = readLayout();
  let layout = chosen || 'grid';
  let choiceMade = chosen !== null;
  const apply = () => {
    for (const container of containers) {
      container.classList.toggle('layout-grid', layout === 'grid');
      container.classList.toggle('layout-list', layout === 'list');
      container.dataset.layout = layout;
    }
    const target = layout === 'grid' ? 'list' : 'grid';
    for (const button of buttons) {
      button.setAttribute('aria-pressed', String(layout === 'list'));
      const label = button.querySelector('[data-layout-label]');
      if (label) label.textContent = t(`layout.${target}`);
      // An <svg> has no `hidden` property: set the attribute.
      for (const icon of button.querySelectorAll('[data-layout-icon]')) {
        icon.toggleAttribute('hidden', icon.dataset.layoutIcon !== target);
      }
    }
  };
  apply();
  for (const button of buttons) {
    button.addEventListener('click', () => {
      layout = layout === 'grid' ? 'list' : 'grid';
      choiceMade = true;
      storeLayout(layout);
      apply();
    });
  }
  return {
    get layout() {
      return layout;
    },
    suggest(suggested) {
      if (choiceMade || suggested === layout) return;
      layout = suggested;
      apply();
    },
  };
}

// The plural category of `count` in the page's language: 'one' or 'many' (French keeps the singular for 0 and 1,
// English for 1 only).
function plural(count) {
  return new Intl.PluralRules(pageLanguage()).select(count) === 'one' ? 'one' : 'many';
}

// "2 appareils affichés sur 3", "0 appareil affiché sur 3"; "2 devices shown of 3".
export function countLabel(shown, total) {
  return t(`count.${plural(shown)}`, {shown, total});
}

// How many points a chart shows, in words ("aucune mesure" for none): "1 mesure", "1 heure (min, moyenne, max)".
export function seriesLabel(count, bucket) {
  if (!count) return t('series.none');
  return t(`series.${bucket}.${count === 1 ? 'one' : 'many'}`, {count});
}

export function cardMatches(card, text) {
  if (!text) return true;
  const name = (card.dataset.name || '').toLowerCase();
  const mac = (card.dataset.mac || '').toLowerCase();
  return name.includes(text) || mac.includes(text);
}

// The filter bar hides, as one types, the cards whose name and MAC do not contain the text.
export function initFilter(container) {
  const input = document.querySelector('[data-filter]');
  const count = document.querySelector('[data-filter-count]');
  const noMatch = document.querySelector('[data-no-match]');
  const apply = () => {
    const text = input ? input.value.trim().toLowerCase() : '';
    const cards = container.querySelectorAll(':scope > [data-card]');
    let shown = 0;
    for (const card of cards) {
      const visible = cardMatches(card, text);
      card.hidden = !visible;
      if (visible) shown += 1;
    }
    if (count) count.textContent = text ? countLabel(shown, cards.length) : '';
    if (noMatch) noMatch.hidden = !(text && cards.length > 0 && shown === 0);
  };
  if (input) input.addEventListener('input', apply);
  apply();
  return apply;
}

// A text rule of the server (rules.TextRule.browser_data): the message of the first part of it that
// `text` breaks, or null. The parts, their order and their patterns are the server's, as data.
export function ruleProblem(rule, text) {
  for (const [code, pattern] of rule.checks) {
    if (new RegExp(pattern, 'u').test(text)) return rule.messages[code];
  }
  return null;
}

// The name rule (rules.NAME_RULE), checked in the page to answer at once; the server checks it again.
export const nameProblem = (name) => ruleProblem(protocol().name, name);

function setStatus(form, text, isError = false) {
  const status = form.querySelector('.rename-status');
  status.textContent = text;
  status.classList.toggle('is-error', isError);
}

export function showName(card, name) {
  card.dataset.name = name;
  for (const el of card.querySelectorAll('[data-device-name]')) el.textContent = name;
  const open = card.querySelector('[data-rename-open]');
  if (open) open.setAttribute('aria-label', t('rename.label', {name}));
  const toggle = card.querySelector('[data-led-toggle]');
  if (toggle) toggle.setAttribute('aria-label', t('led.label', {name}));
}

async function waitForName(card, form, name) {
  for (let attempt = 0; attempt < 10; attempt += 1) {
    await sleep(1000);
    try {
      const response = await fetch(`/api/devices/${card.dataset.id}`, {headers: {Accept: 'application/json'}});
      if (response.ok) {
        const device = await response.json();
        if (device.name === name) {
          showName(card, name);
          form.hidden = true;
          return;
        }
      }
    } catch {
      // keep trying
    }
  }
  setStatus(form, t('rename.late'), true);
}

// A card's rename form: the page's one template, copied under the card's header the first time it opens.
function renameForm(card) {
  let form = card.querySelector('[data-rename-form]');
  const template = document.querySelector('[data-rename-template]');
  if (!form && template) {
    form = template.content.firstElementChild.cloneNode(true);
    card.querySelector('.card-header').after(form);
  }
  return form;
}

// "Renommer" on a card opens its form; the POST answers 200 (renamed), 202 (pending) or an error.
export function initRename(container, onRenamed = () => {}) {
  container.addEventListener('click', (event) => {
    const card = event.target.closest('[data-card]');
    if (!card) return;
    const opening = Boolean(event.target.closest('[data-rename-open]'));
    const form = opening ? renameForm(card) : card.querySelector('[data-rename-form]');
    if (!form) return;
    if (opening) {
      form.hidden = !form.hidden;
      if (!form.hidden) {
        form.elements.name.value = card.dataset.name;
        setStatus(form, '');
        form.elements.name.focus();
        form.elements.name.select();
      }
    } else if (event.target.closest('[data-rename-cancel]')) {
      form.hidden = true;
    }
  });
  container.addEventListener('submit', async (event) => {
    const form = event.target.closest('[data-rename-form]');
    if (!form) return;
    event.preventDefault();
    const card = form.closest('[data-card]');
    const name = form.elements.name.value;
    const problem = nameProblem(name);
    if (problem) {
      setStatus(form, problem, true);
      return;
    }
    const submit = form.querySelector('button[type="submit"]');
    submit.disabled = true;
    setStatus(form, t('rename.sending'));
    const {status, body} = await postJSON(`/api/devices/${card.dataset.id}/name`, {name});
    submit.disabled = false;
    if (status === 200) {
      showName(card, body.name);
      setStatus(form, '');
      form.hidden = true;
      onRenamed(card);
    } else if (status === 202) {
      setStatus(form, t('rename.pending'));
      waitForName(card, form, name).then(() => onRenamed(card));
    } else {
      setStatus(form, body.error || t('http.error', {status}), true);
    }
  });
}

// Intl's formats, made once per precision (a /historique page formats thousands of times).
const localFormats = {};

// "05/04/2026 09:07:19" (",603" with milliseconds) in French, "04/05/2026, 09:07:19 AM" in American English: the
// page's language (pageLocale), in the browser's time zone.
export function formatLocal(date, withMs = false) {
  const key = withMs ? 'ms' : 's';
  if (!localFormats[key]) {
    localFormats[key] = new Intl.DateTimeFormat(pageLocale(), {
      year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
      ...(withMs ? {fractionalSecondDigits: 3} : {}),
    });
  }
  return localFormats[key].format(date);
}

// "09:07:19": a time of day in the page's language (a live card's chart labels).
export function formatTime(date) {
  if (!localFormats.time) {
    localFormats.time = new Intl.DateTimeFormat(pageLocale(), {hour: '2-digit', minute: '2-digit', second: '2-digit'});
  }
  return localFormats.time.format(date);
}

// "2026-04-05 08:07:19 UTC" (".603" with milliseconds).
export function formatUtc(date, withMs = false) {
  const iso = date.toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, withMs ? 23 : 19)} UTC`;
}

// <time datetime="…"> elements written in UTC by the server: local text, UTC in the tooltip. Idempotent.
export function localizeTimes(root = document) {
  for (const element of root.querySelectorAll('time[datetime]:not([data-local])')) {
    const date = new Date(element.getAttribute('datetime'));
    if (Number.isNaN(date.getTime())) continue;
    const withMs = element.dataset.precision === 'ms';
    element.textContent = formatLocal(date, withMs);
    element.title = formatUtc(date, withMs);
    element.dataset.local = '1';
  }
}
