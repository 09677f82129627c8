// Which cards /capteurs shows: the server's list of online devices reconciled with the joins and leaves heard
// over MQTT.
//
// No critical-section race: the page subscribes first, then fetches the server's list of online devices and
// reconciles. Joins and leaves seen meanwhile are remembered by "session_name;session" (a session id is never
// reused), so a device that left during the fetch is not put back and one that joined is kept.
// Joins and leaves carry the device's session_name (its name when the session started); cards show the device's
// current name.
//
// Each reconciliation that applied the server's list (and fetched the cards it lacked) ends with a
// `sensorhub:reconciled` event on the container, which bubbles (the page's cards then agree with the server as
// of that list; the browser tests and benchmarks wait on it).
import {LARGE_FLEET} from './fleetview.js';
import {protocol, showName, sleep} from './common.js';

const RECONCILE_AGAIN_MS = 3000;
const EVENT_MEMORY_MS = 10 * 60 * 1000;

// Server-rendered, escaped card fragments; a <template> keeps them inert until placed.
function parseCards(html) {
  const template = document.createElement('template');
  template.innerHTML = html;
  return [...template.content.querySelectorAll('[data-card]')];
}

// Visitors who may not see session ids (accounts exist, not logged in) get cards without them: a leave for
// such a card may be a stale Will, so the server, which knows, decides.
const sessionUnknown = (card) => card.dataset.session === undefined;

export class Reconciler {
  // `cards`: the page's LiveCards. `onDropped(card)` when a card leaves the page or is replaced;
  // `onListFailed(err)` when the server's list cannot be read (tried again 3 s later), `onListRead()` when it was.
  // `pageUrl`: a paged page's fragment of its own cards (its filter, order and page), read instead of every
  // online device; a join of a device that is not on the page is then none of its business.
  constructor(container, cards, {onDropped = () => {}, onListFailed = () => {}, onListRead = () => {},
    pageUrl = ''} = {}) {
    this.container = container;
    this.pageUrl = pageUrl;
    this.cards = cards;
    this.onDropped = onDropped;
    this.onListFailed = onListFailed;
    this.onListRead = onListRead;
    this.separator = protocol().separator;
    this.clock = 0; // orders MQTT events, card confirmations and reconciliations
    this.events = new Map(); // "session_name;session" -> {type: 'join' | 'leave', at: clock, time: ms}
    this.confirmed = new WeakMap(); // card -> the clock when the server last confirmed it (kept out of the DOM)
    this.generation = 0;
  }

  tick() {
    this.clock += 1;
    return this.clock;
  }

  eventKey(name, session) {
    return `${name}${this.separator}${session}`;
  }

  remember(type, name, session) {
    const now = Date.now();
    this.events.set(this.eventKey(name, session), {type, at: this.tick(), time: now});
    if (this.events.size > 200) {
      for (const [key, event] of this.events) if (now - event.time > EVENT_MEMORY_MS) this.events.delete(key);
    }
  }

  hasLeft(name, session) {
    return this.events.get(this.eventKey(name, session))?.type === 'leave';
  }

  newerThan(card, since) {
    const event = this.events.get(this.eventKey(card.dataset.sessionName, card.dataset.session));
    return (event?.type === 'join' && event.at > since) || (this.confirmed.get(card) || 0) > since;
  }

  cardById(id) {
    return this.cards.byId.get(String(id))?.card || null;
  }

  cardBySessionName(name) {
    return this.cards.bySessionName.get(name)?.card || null;
  }

  allCards() {
    return [...this.cards.records()].map((record) => record.card);
  }

  // A card the server rendered with the page: as confirmed as can be.
  adopt(card) {
    this.confirmed.set(card, this.tick());
    this.cards.add(card);
  }

  dropCard(card) {
    this.onDropped(card);
    const record = this.cards.byCard(card);
    if (record) this.cards.remove(record);
    else card.remove();
  }

  // The view follows at the next frame (one pass however many cards came or went).
  afterChange() {
    this.cards.structureChanged();
  }

  // Put a fetched card on the page unless its device is offline or its session already ended; whether the page
  // changed (a card came or was replaced, a name changed).
  placeCard(card, replace) {
    if (card.dataset.online !== '1' || this.hasLeft(card.dataset.sessionName, card.dataset.session)) return false;
    const current = this.cardById(card.dataset.id);
    if (current && !replace && (sessionUnknown(card) || current.dataset.session === card.dataset.session)) {
      // Only what changed is written: a reconciliation of 2,000 cards otherwise rewrote every name and attribute
      // (a long task for the page's style and layout).
      this.confirmed.set(current, this.tick());
      if (current.dataset.name === card.dataset.name) return false;
      showName(current, card.dataset.name);
      return true;
    }
    const clash = this.cardBySessionName(card.dataset.sessionName);
    if (clash && clash !== current) this.dropCard(clash); // a name freed by a rename and taken again
    this.confirmed.set(card, this.tick());
    if (current) {
      this.onDropped(current);
      this.cards.replace(this.cards.byCard(current), card);
    } else {
      card.classList.add('is-new');
      this.container.append(card); // the next frame puts it at its place in the order
      this.cards.add(card);
    }
    return true;
  }

  async reconcile() {
    this.generation += 1;
    const generation = this.generation;
    const since = this.clock;
    // A large fleet is reconciled against a brief list (no chart data, no controls: parsing 2,000 whole cards
    // again would hold the page for a long moment); the cards it lacks are then fetched one by one.
    const brief = !this.pageUrl && this.cards.size > LARGE_FLEET;
    const url = this.pageUrl || (brief ? '/sensor/online?brief=1' : '/sensor/online');
    let fresh;
    try {
      const response = await fetch(url, {headers: {Accept: 'text/html'}});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      fresh = parseCards(await response.text());
    } catch (err) {
      if (generation === this.generation) {
        this.onListFailed(err);
        setTimeout(() => generation === this.generation && this.reconcile(), RECONCILE_AGAIN_MS);
      }
      return;
    }
    if (generation !== this.generation) return;
    this.onListRead();
    const freshIds = new Set(fresh.map((card) => card.dataset.id));
    const lacking = [];
    let changed = !brief; // a large page that the server's list confirms as it is is left alone (no long task)
    for (const card of fresh) {
      const current = this.cardById(card.dataset.id);
      if (current && this.newerThan(current, since)) continue; // what MQTT told us meanwhile is newer
      const replace = Boolean(current) && !sessionUnknown(card) && current.dataset.session !== card.dataset.session;
      if (brief && (!current || replace)) lacking.push({id: card.dataset.id, replace});
      else if (this.placeCard(card, replace)) changed = true;
    }
    for (const card of this.allCards()) {
      if (!freshIds.has(card.dataset.id) && !this.newerThan(card, since)) {
        this.dropCard(card);
        changed = true;
      }
    }
    if (changed) this.afterChange();
    await this.fetchCards(lacking, since);
    this.container.dispatchEvent(new Event('sensorhub:reconciled', {bubbles: true}));
  }

  // The whole cards a brief reconciliation lacked, a few requests at a time.
  async fetchCards(lacking, since) {
    const one = async ({id, replace}) => {
      try {
        const response = await fetch(`/sensor/${encodeURIComponent(id)}`, {headers: {Accept: 'text/html'}});
        if (!response.ok) return;
        const [card] = parseCards(await response.text());
        const current = this.cardById(id);
        if (card && !(current && this.newerThan(current, since))) this.placeCard(card, replace);
      } catch {
        // the next reconciliation tries again
      }
    };
    for (let start = 0; start < lacking.length; start += 6) {
      await Promise.all(lacking.slice(start, start + 6).map(one));
    }
  }

  // The ingest client records a join at the same time as we hear of it: retry until it has.
  async fetchJoined(name, session) {
    const url = `/sensor/by-session?name=${encodeURIComponent(name)}&session=${encodeURIComponent(session)}`;
    let delay = 50;
    for (let attempt = 0; attempt < 10; attempt += 1) {
      await sleep(delay);
      delay = Math.min(delay * 2, 2000);
      if (this.hasLeft(name, session)) return;
      const shown = this.cardBySessionName(name);
      if (shown && shown.dataset.session === session) return;
      try {
        const response = await fetch(url, {headers: {Accept: 'text/html'}});
        if (response.ok) {
          const [card] = parseCards(await response.text());
          if (card) this.placeCard(card, true);
          return;
        }
      } catch {
        // the web server restarts or the network hiccups: try again
      }
    }
  }

  // A join: `name;session`, or a bare MAC address (that device starts a new session, its current one is over).
  join(text) {
    if (!text.includes(this.separator)) {
      const mac = text.toUpperCase();
      for (const card of this.allCards()) if (card.dataset.mac === mac) card.classList.add('is-renewing');
      return;
    }
    const [name, session] = text.split(this.separator);
    if (!name || !session) return;
    this.remember('join', name, session);
    const card = this.cardBySessionName(name);
    if (card) {
      card.dataset.session = session;
      card.classList.remove('is-renewing');
      return;
    }
    if (!this.pageUrl) this.fetchJoined(name, session);
  }

  // A leave: `name;session` (a device's Will, or its goodbye).
  leave(text) {
    const [name, session] = text.split(this.separator);
    if (!name || !session) return;
    this.remember('leave', name, session);
    const card = this.cardBySessionName(name);
    if (card && sessionUnknown(card)) {
      setTimeout(() => this.reconcile(), 500);
      setTimeout(() => this.reconcile(), RECONCILE_AGAIN_MS);
    } else if (card && card.dataset.session === session) {
      this.dropCard(card);
      this.afterChange();
    }
  }

  // After (re)connecting: the server's list now, and again 3 s later for a join or leave the ingest client had
  // not committed when the list was read.
  start() {
    this.reconcile();
    setTimeout(() => this.reconcile(), RECONCILE_AGAIN_MS);
  }
}
