// The LED switch of /capteurs's cards: a POST to the web server, then the card waits (5 s at most) for the
// device's own report of its LED, which the live feed brings (LiveCards' onLed); the switch never pretends.
import {postJSON, t} from './common.js';

const LED_CONFIRM_MS = 5000;

export class LedControl {
  constructor(container) {
    this.closed = container.dataset.controls === 'closed'; // the visitor may watch, not command
    this.timers = new WeakMap(); // card -> its confirmation timeout
    container.addEventListener('change', (event) => this.toggled(event));
  }

  // The device's LED state, as it reported it: the card shows it and stops waiting.
  show(card, on) {
    const state = card.querySelector('[data-led-state]');
    state.dataset.value = on ? '1' : '0';
    state.textContent = on ? t('led.on') : t('led.off');
    this.setPending(card, false);
    card.querySelector('[data-led-toggle]').checked = on;
  }

  // A card leaving the page (or replaced) waits for nothing any more.
  forget(card) {
    clearTimeout(this.timers.get(card));
  }

  setPending(card, pending) {
    const toggle = card.querySelector('[data-led-toggle]');
    toggle.disabled = pending || this.closed;
    card.querySelector('[data-pending]').hidden = !pending;
    if (pending) {
      card.dataset.ledPending = '1';
    } else {
      delete card.dataset.ledPending;
      this.forget(card);
    }
  }

  async toggled(event) {
    const toggle = event.target.closest('[data-led-toggle]');
    if (!toggle) return;
    const card = toggle.closest('[data-card]');
    showCardError(card, '');
    this.setPending(card, true);
    const {status, body} = await postJSON(`/api/devices/${card.dataset.id}/led`, {on: toggle.checked});
    if (!card.isConnected || !card.dataset.ledPending) return; // gone, or the device already answered
    if (status === 202) {
      this.timers.set(card, setTimeout(() => {
        if (!card.dataset.ledPending) return;
        this.setPending(card, false);
        revertToggle(card);
        showCardError(card, t('led.unconfirmed'));
      }, LED_CONFIRM_MS));
      return;
    }
    this.setPending(card, false);
    revertToggle(card);
    showCardError(card, body.error || t('http.error', {status}));
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
