// /capteurs: the devices online now, kept live through MQTT over WebSockets (subscribe only). This module puts
// the page together:
// - live.js: the connection to the broker (and, in private mode, its token);
// - reconcile.js: which cards are on the page (the server's list, joins and leaves);
// - livecards.js: the cards as data, found through Maps, written once per animation frame;
// - fleetview.js: their order, filters and layout, a large fleet's too;
// - ledcontrol.js and common.js's initRename: the LED switch and renaming.
// Readings come from the ingest client's live feed once stored, by device id.
import {FleetView, LARGE_FLEET} from './fleetview.js';
import {LedControl} from './ledcontrol.js';
import {connectLive} from './live.js';
import {LiveCards} from './livecards.js';
import {Reconciler} from './reconcile.js';
import {initLayoutToggle, initRename, protocol, t} from './common.js';

const {topics: TOPIC, separator: SEPARATOR, live: LIVE} = protocol();

const container = document.querySelector('[data-live]');
const liveStatus = document.querySelector('[data-live-status]');
const banner = document.querySelector('[data-broker-banner]');

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

let view = null;
const leds = new LedControl(container);
const cards = new LiveCards(container, {
  onFrame: () => view.update(), onLed: (record, on) => leds.show(record.card, on), everyChartUpTo: LARGE_FLEET,
});
const reconciler = new Reconciler(container, cards, {
  onDropped: (card) => leds.forget(card),
  onListFailed: (err) => showBanner(
    t('list.unavailable', {error: err.message})),
  onListRead: () => {
    if (liveStatus.dataset.state === 'live') hideBanner();
  },
});

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

function onMessage(topic, text) {
  if (topic === LIVE.topic) onLive(text);
  else if (topic === TOPIC.JOIN) reconciler.join(text);
  else if (topic === TOPIC.LEAVE) reconciler.leave(text);
}

function onReady() {
  setLiveStatus('live', t('live.on'));
  hideBanner();
  reconciler.start();
}

function onLost({url, everConnected, sessionEnded}) {
  setLiveStatus('lost', t('live.lost'));
  if (sessionEnded) {
    showBanner(t('live.session'));
    return;
  }
  showBanner(everConnected
    ? t('live.reconnecting', {url})
    : t('live.unreachable', {url}));
}

const layout = initLayoutToggle();
view = new FleetView(container, cards, layout);
initRename(container, () => reconciler.afterChange());
for (const card of container.querySelectorAll(':scope > [data-card]')) reconciler.adopt(card);
cards.flush(); // at once: the server's order, the layout and the charts before the first paint
if (!connectLive(container, {onReady, onLost, onMessage})) {
  setLiveStatus('lost', t('live.offline'));
  showBanner(t('live.nolibrary'));
}
