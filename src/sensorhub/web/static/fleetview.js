// How /capteurs shows its cards: their order (name, state or last reading), the filters (name or MAC, state,
// last reading), the count, and what changes for a large fleet: sorting and state filters appear, cards off
// screen are not rendered (CSS content-visibility), the list becomes compact and, unless the visitor chose
// a layout, the page switches to it. A small fleet looks exactly as it always did.
import {cardMatches, countLabel} from './common.js';

// Above this many devices the sorting and state filters appear and cards off screen are not rendered.
export const LARGE_FLEET = 12;
// Above this many the list layout is suggested (a visitor who chose a layout keeps it).
export const LIST_FLEET = 40;
// Orders that depend on live values are refreshed this often rather than on every message (rows that jump
// several times a second cannot be read).
const RESORT_MS = 5000;
const SILENT_MS = 60 * 1000;
const RECENT_MS = 10 * 1000;

const byName = (a, b) => {
  const left = (a.card.dataset.name || '').toLowerCase();
  const right = (b.card.dataset.name || '').toLowerCase();
  if (left !== right) return left < right ? -1 : 1;
  return Number(a.card.dataset.id) - Number(b.card.dataset.id);
};

const ORDERS = {
  name: byName,
  // LED on first, then button pressed, then by name.
  state: (a, b) => (Number(b.led) - Number(a.led)) || (Number(b.button) - Number(a.button)) || byName(a, b),
  // The longest silent first: those are the ones to look at.
  seen: (a, b) => (a.lastSeen - b.lastSeen) || byName(a, b),
};

const STATES = {
  '': () => true,
  'led-on': (record) => record.led,
  'led-off': (record) => !record.led,
  pressed: (record) => record.button,
  recent: (record, now) => now - record.lastSeen <= RECENT_MS,
  silent: (record, now) => now - record.lastSeen > SILENT_MS,
  alerts: (record) => Boolean(record.card.querySelector('[data-alert-marker]')),
};

export class FleetView {
  // `paged`: the server filtered, sorted and cut the list (a very large fleet): the form asks it for another
  // page; the page's cards stay in the server's order.
  constructor(container, cards, layout, {paged = false} = {}) {
    this.container = container;
    this.cards = cards; // LiveCards
    this.layout = layout; // from initLayoutToggle()
    this.paged = paged;
    this.form = document.querySelector('[data-fleet-form]');
    this.input = document.querySelector('[data-filter]');
    this.count = document.querySelector('[data-filter-count]');
    this.noMatch = document.querySelector('[data-no-match]');
    this.emptyState = document.querySelector('[data-empty-state]');
    this.controls = document.querySelector('[data-fleet-controls]');
    this.sortSelect = document.querySelector('[data-sort]');
    this.stateSelect = document.querySelector('[data-state-filter]');
    if (this.form) {
      this.form.addEventListener('submit', (event) => {
        if (!this.paged) event.preventDefault(); // the filter is applied as one types
      });
    }
    if (paged) {
      for (const select of this.form ? this.form.querySelectorAll('select') : []) {
        select.addEventListener('change', () => this.form.requestSubmit());
      }
      return;
    }
    const again = () => this.update();
    if (this.input) this.input.addEventListener('input', again);
    if (this.sortSelect) this.sortSelect.addEventListener('change', again);
    if (this.stateSelect) this.stateSelect.addEventListener('change', again);
    setInterval(() => {
      if (this.sort !== 'name' || (this.state === 'recent' || this.state === 'silent')) this.update();
    }, RESORT_MS);
  }

  get sort() {
    return this.sortSelect?.value in ORDERS ? this.sortSelect.value : 'name';
  }

  get state() {
    return this.stateSelect?.value in STATES ? this.stateSelect.value : '';
  }

  // Order, filter and count the cards; only the cards out of place move and only changed flags are written.
  update() {
    if (this.paged) {
      this.container.classList.add('is-large');
      this.layout.suggest('list');
      return;
    }
    const total = this.cards.size;
    const large = total > LARGE_FLEET;
    this.container.classList.toggle('is-large', large);
    if (this.controls) this.controls.hidden = !large;
    if (total > LIST_FLEET) this.layout.suggest('list');
    const records = [...this.cards.records()].sort(ORDERS[large ? this.sort : 'name']);
    const children = this.container.children;
    records.forEach((record, index) => {
      if (children[index] !== record.card) this.container.insertBefore(record.card, children[index] || null);
    });
    const text = this.input ? this.input.value.trim().toLowerCase() : '';
    const state = large ? this.state : '';
    const keep = STATES[state];
    const now = Date.now();
    let shown = 0;
    for (const record of records) {
      const visible = cardMatches(record.card, text) && keep(record, now);
      if (record.card.hidden === visible) record.card.hidden = !visible;
      if (visible) shown += 1;
    }
    const filtering = Boolean(text || state);
    if (this.count) this.count.textContent = filtering ? countLabel(shown, total) : '';
    if (this.noMatch) this.noMatch.hidden = !(filtering && total > 0 && shown === 0);
    if (this.emptyState) this.emptyState.hidden = total > 0;
  }
}
