// /capteurs: the devices online now, kept live through MQTT over WebSockets (subscribe only).
//
// No critical-section race: the page subscribes first, then fetches the server's list of online devices and
// reconciles. Joins and leaves seen meanwhile are remembered by "session_name;session" (a session id is never
// reused), so a device that left during the fetch is not put back and one that joined is kept.
// Joins and leaves carry the device's session_name (its name when the session started); readings come from
// the ingest client's live feed once stored, by device id. Cards show the device's current name.
// A message finds its card through LiveCards' Maps; the DOM follows once per animation frame (livecards.js),
// the order, filters and layout of a large fleet are fleetview.js's.
import {FleetView, LARGE_FLEET} from './fleetview.js';
import {LiveCards} from './livecards.js';
import {initLayoutToggle, initRename, postJSON, protocol, showName, sleep} from './common.js';

const {topics: TOPIC, separator: SEPARATOR, live: LIVE} = protocol();
const LED_CONFIRM_MS = 5000;
const RECONCILE_AGAIN_MS = 3000;
// Private mode: the broker's WebSockets port opens only with a token from the web server, valid 5 minutes for
// opening a connection; the page keeps a fresh one for its reconnections.
const TOKEN_REFRESH_MS = 60 * 1000;
const EVENT_MEMORY_MS = 10 * 60 * 1000;

const container = document.querySelector('[data-live]');
const liveStatus = document.querySelector('[data-live-status]');
const banner = document.querySelector('[data-broker-banner]');

let clock = 0; // orders MQTT events, card confirmations and reconciliations
const events = new Map(); // "session_name;session" -> {type: 'join' | 'leave', at: clock, time: ms}
const ledTimers = new WeakMap();
const confirmed = new WeakMap(); // card -> the clock when the server last confirmed it (kept out of the DOM)
let reconcileGeneration = 0;
let view = null;
const cards = new LiveCards(container, {
  onFrame: () => view.update(), onLed: (record, on) => setLed(record.card, on), everyChartUpTo: LARGE_FLEET,
});

const tick = () => ++clock;
// Visitors who may not see session ids (accounts exist, not logged in) get cards without them: a leave for
// such a card may be a stale Will, so the server, which knows, decides.
const sessionUnknown = (card) => card.dataset.session === undefined;
const eventKey = (name, session) => `${name}${SEPARATOR}${session}`;

function remember(type, name, session) {
  const now = Date.now();
  events.set(eventKey(name, session), {type, at: tick(), time: now});
  if (events.size > 200) {
    for (const [key, event] of events) if (now - event.time > EVENT_MEMORY_MS) events.delete(key);
  }
}

const hasLeft = (name, session) => events.get(eventKey(name, session))?.type === 'leave';

function newerThan(card, since) {
  const event = events.get(eventKey(card.dataset.sessionName, card.dataset.session));
  return (event?.type === 'join' && event.at > since) || (confirmed.get(card) || 0) > since;
}

const allCards = () => [...cards.records()].map((record) => record.card);
const cardById = (id) => cards.byId.get(String(id))?.card || null;
const cardBySessionName = (name) => cards.bySessionName.get(name)?.card || null;

// Server-rendered, escaped card fragments; a <template> keeps them inert until placed.
function parseCards(html) {
  const template = document.createElement('template');
  template.innerHTML = html;
  return [...template.content.querySelectorAll('[data-card]')];
}

function dropCard(card) {
  clearTimeout(ledTimers.get(card));
  const record = cards.byCard(card);
  if (record) cards.remove(record);
  else card.remove();
}

// The view follows at the next frame (one pass however many cards came or went).
const afterChange = () => cards.structureChanged();

// Put a fetched card on the page unless its device is offline or its session already ended; whether the page
// changed (a card came or was replaced, a name changed).
function placeCard(card, replace) {
  if (card.dataset.online !== '1' || hasLeft(card.dataset.sessionName, card.dataset.session)) return false;
  const current = cardById(card.dataset.id);
  if (current && !replace && (sessionUnknown(card) || current.dataset.session === card.dataset.session)) {
    // Only what changed is written: a reconciliation of 2,000 cards otherwise rewrote every name and attribute
    // (a long task for the page's style and layout).
    confirmed.set(current, tick());
    if (current.dataset.name === card.dataset.name) return false;
    showName(current, card.dataset.name);
    return true;
  }
  const clash = cardBySessionName(card.dataset.sessionName);
  if (clash && clash !== current) dropCard(clash); // a name freed by a rename and taken again
  confirmed.set(card, tick());
  if (current) {
    clearTimeout(ledTimers.get(current));
    cards.replace(cards.byCard(current), card);
  } else {
    card.classList.add('is-new');
    container.append(card); // the next frame puts it at its place in the order
    cards.add(card);
  }
  return true;
}

async function reconcile() {
  const generation = ++reconcileGeneration;
  const since = clock;
  // A large fleet is reconciled against a brief list (no chart data, no controls: parsing 2,000 whole cards
  // again would hold the page for a long moment); the cards it lacks are then fetched one by one.
  const brief = cards.size > LARGE_FLEET;
  let fresh;
  try {
    const response = await fetch(brief ? '/sensor/online?brief=1' : '/sensor/online', {headers: {Accept: 'text/html'}});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    fresh = parseCards(await response.text());
  } catch (err) {
    if (generation === reconcileGeneration) {
      showBanner(`Liste des capteurs indisponible (${err.message}) : nouvel essai dans quelques secondes.`);
      setTimeout(() => generation === reconcileGeneration && reconcile(), RECONCILE_AGAIN_MS);
    }
    return;
  }
  if (generation !== reconcileGeneration) return;
  if (liveStatus.dataset.state === 'live') hideBanner();
  const freshIds = new Set(fresh.map((card) => card.dataset.id));
  const lacking = [];
  let changed = !brief; // a large page that the server's list confirms as it is is left alone (no long task)
  for (const card of fresh) {
    const current = cardById(card.dataset.id);
    if (current && newerThan(current, since)) continue; // what MQTT told us meanwhile is newer
    const replace = Boolean(current) && !sessionUnknown(card) && current.dataset.session !== card.dataset.session;
    if (brief && (!current || replace)) lacking.push({id: card.dataset.id, replace});
    else if (placeCard(card, replace)) changed = true;
  }
  for (const card of allCards()) {
    if (!freshIds.has(card.dataset.id) && !newerThan(card, since)) {
      dropCard(card);
      changed = true;
    }
  }
  if (changed) afterChange();
  await fetchCards(lacking, since);
  container.dataset.reconciled = String(Number(container.dataset.reconciled || 0) + 1); // tests wait on it
}

// The whole cards a brief reconciliation lacked, a few requests at a time.
async function fetchCards(lacking, since) {
  const one = async ({id, replace}) => {
    try {
      const response = await fetch(`/sensor/${encodeURIComponent(id)}`, {headers: {Accept: 'text/html'}});
      if (!response.ok) return;
      const [card] = parseCards(await response.text());
      const current = cardById(id);
      if (card && !(current && newerThan(current, since))) placeCard(card, replace);
    } catch {
      // the next reconciliation tries again
    }
  };
  for (let start = 0; start < lacking.length; start += 6) {
    await Promise.all(lacking.slice(start, start + 6).map(one));
  }
}

// The ingest client records a join at the same time as we hear of it: retry until it has.
async function fetchJoined(name, session) {
  const url = `/sensor/by-session?name=${encodeURIComponent(name)}&session=${encodeURIComponent(session)}`;
  let delay = 50;
  for (let attempt = 0; attempt < 10; attempt += 1) {
    await sleep(delay);
    delay = Math.min(delay * 2, 2000);
    if (hasLeft(name, session)) return;
    const shown = cardBySessionName(name);
    if (shown && shown.dataset.session === session) return;
    try {
      const response = await fetch(url, {headers: {Accept: 'text/html'}});
      if (response.ok) {
        const [card] = parseCards(await response.text());
        if (card) placeCard(card, true);
        return;
      }
    } catch {
      // the web server restarts or the network hiccups: try again
    }
  }
}

function onJoin(text) {
  if (!text.includes(SEPARATOR)) {
    // A bare MAC address: that device starts a new session, its current one is over.
    const mac = text.toUpperCase();
    for (const card of allCards()) if (card.dataset.mac === mac) card.classList.add('is-renewing');
    return;
  }
  const [name, session] = text.split(SEPARATOR);
  if (!name || !session) return;
  remember('join', name, session);
  const card = cardBySessionName(name);
  if (card) {
    card.dataset.session = session;
    card.classList.remove('is-renewing');
    return;
  }
  fetchJoined(name, session);
}

function onLeave(text) {
  const [name, session] = text.split(SEPARATOR);
  if (!name || !session) return;
  remember('leave', name, session);
  const card = cardBySessionName(name);
  if (card && sessionUnknown(card)) {
    setTimeout(reconcile, 500);
    setTimeout(reconcile, RECONCILE_AGAIN_MS);
  } else if (card && card.dataset.session === session) {
    dropCard(card);
    afterChange();
  }
}

const controlsClosed = container.dataset.controls === 'closed';

function setPending(card, pending) {
  const toggle = card.querySelector('[data-led-toggle]');
  toggle.disabled = pending || controlsClosed;
  card.querySelector('[data-pending]').hidden = !pending;
  if (pending) {
    card.dataset.ledPending = '1';
  } else {
    delete card.dataset.ledPending;
    clearTimeout(ledTimers.get(card));
  }
}

function showCardError(card, message) {
  const box = card.querySelector('[data-card-error]');
  box.textContent = message || '';
  box.hidden = !message;
}

function revertToggle(card) {
  card.querySelector('[data-led-toggle]').checked = card.querySelector('[data-led-state]').dataset.value === '1';
}

function setLed(card, on) {
  const state = card.querySelector('[data-led-state]');
  state.dataset.value = on ? '1' : '0';
  state.textContent = on ? 'allumée' : 'éteinte';
  setPending(card, false);
  card.querySelector('[data-led-toggle]').checked = on;
}

// The ingest client's live feed: what it stored, a line `device id;code;value` per reading, many a message.
// It checked each reading's session, so a card is found by its device's id alone.
function onLive(text) {
  for (const line of text.split('\n')) {
    const [id, code, raw] = line.split(SEPARATOR);
    const record = cards.byId.get(id);
    if (!record || !/^\d{1,3}$/.test(raw || '')) continue;
    const value = Number(raw);
    const kind = LIVE.codes[code];
    if (kind === 'led') cards.setLed(record, value === 1);
    else if (kind === 'button') cards.setButton(record, value === 1);
    else if (kind === 'light' && value <= 100) cards.addLight(record, value);
  }
}

const decoder = new TextDecoder();

function onMessage(topic, payload) {
  const text = decoder.decode(payload);
  if (topic === LIVE.topic) onLive(text);
  else if (topic === TOPIC.JOIN) onJoin(text);
  else if (topic === TOPIC.LEAVE) onLeave(text);
}

async function onToggle(event) {
  const toggle = event.target.closest('[data-led-toggle]');
  if (!toggle) return;
  const card = toggle.closest('[data-card]');
  showCardError(card, '');
  setPending(card, true);
  const {status, body} = await postJSON(`/api/devices/${card.dataset.id}/led`, {on: toggle.checked});
  if (!card.isConnected || !card.dataset.ledPending) return; // gone, or the device already answered
  if (status === 202) {
    ledTimers.set(card, setTimeout(() => {
      if (!card.dataset.ledPending) return;
      setPending(card, false);
      revertToggle(card);
      showCardError(card, "l'appareil n'a pas confirmé le changement de sa LED");
    }, LED_CONFIRM_MS));
    return;
  }
  setPending(card, false);
  revertToggle(card);
  showCardError(card, body.error || `erreur HTTP ${status}`);
}

function showBanner(text) {
  banner.textContent = text;
  banner.hidden = false;
}

function hideBanner() {
  banner.hidden = true;
}

function setLiveStatus(state, text) {
  liveStatus.dataset.state = state;
  liveStatus.textContent = text;
}

function connect() {
  if (!window.mqtt) {
    setLiveStatus('lost', 'Hors ligne');
    showBanner('Bibliothèque MQTT.js absente : lancez « make install » sur le serveur, puis rechargez la page.');
    return;
  }
  // A page that came over HTTPS must use the secure WebSockets listener (browsers refuse ws: from https:).
  const secure = window.location.protocol === 'https:';
  const port = secure ? container.dataset.wssPort : container.dataset.wsPort;
  const url = `${secure ? 'wss' : 'ws'}://${window.location.hostname}:${port}`;
  let token = container.dataset.liveToken || '';
  let sessionEnded = false;
  if (token) {
    setInterval(async () => {
      try {
        const response = await fetch('/api/live-token', {cache: 'no-store', credentials: 'same-origin'});
        if (response.status === 401) {
          sessionEnded = true;
          return;
        }
        if (response.ok) token = (await response.json()).token;
      } catch (err) {
        console.warn('live token:', err.message); // the web server is away: keep the last one meanwhile
      }
    }, TOKEN_REFRESH_MS);
  }
  const client = window.mqtt.connect(url, {
    transformWsUrl: (wsUrl) => (token ? `${wsUrl}?token=${encodeURIComponent(token)}` : wsUrl),
    protocolVersion: 5,
    clean: true,
    keepalive: Number(container.dataset.keepalive) || 5,
    reconnectPeriod: 2000,
    connectTimeout: 5000,
    resubscribe: false,
    clientId: `sensorhub-web-${Math.random().toString(16).slice(2, 10)}`,
  });
  let everConnected = false;
  const lost = () => {
    setLiveStatus('lost', 'Connexion au broker perdue');
    if (sessionEnded) {
      showBanner('Votre session a pris fin : reconnectez-vous (/login) pour suivre les capteurs en direct.');
      return;
    }
    showBanner(everConnected
      ? `Connexion au broker MQTT perdue (${url}) : reconnexion en cours, les données affichées ne sont plus à jour.`
      : `Impossible de joindre le broker MQTT (${url}) : nouvel essai toutes les 2 secondes.`);
  };
  client.on('connect', () => {
    client.subscribe(protocol().subscriptions, (err) => {
      if (err) {
        lost();
        return;
      }
      everConnected = true;
      setLiveStatus('live', 'En direct');
      hideBanner();
      reconcile();
      // A join or leave the ingest client had not committed when the list was read shows up here.
      setTimeout(reconcile, RECONCILE_AGAIN_MS);
    });
  });
  client.on('close', lost);
  client.on('offline', lost);
  client.on('error', (err) => console.warn('MQTT:', err.message));
  client.on('message', onMessage);
}

const layout = initLayoutToggle();
view = new FleetView(container, cards, layout);
initRename(container, () => afterChange());
container.addEventListener('change', onToggle);
for (const card of container.querySelectorAll(':scope > [data-card]')) {
  confirmed.set(card, tick());
  cards.add(card);
}
cards.flush(); // at once: the server's order, the layout and the charts before the first paint
connect();
