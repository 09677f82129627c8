// /alertes: acknowledge and snooze active alerts, add, edit, enable, disable and delete rules, through the JSON
// API (CSRF header as every command); the page is reloaded once the server took a change, so what is shown is
// always what the database holds. Errors (the server's message, in the page's language) are shown next to what caused them.
import {sendJSON, t} from './common.js';

const send = sendJSON;

function showError(box, message) {
  if (!box) return;
  box.textContent = message || '';
  box.hidden = !message;
}

const succeeded = (status) => status >= 200 && status < 300;

// -- active alerts ----------------------------------------------------------------------------------------------

async function alertAction(item, path, payload) {
  const box = item.querySelector('[data-alert-error]');
  showError(box, '');
  for (const button of item.querySelectorAll('button')) button.disabled = true;
  const {status, body} = await send('POST', `/api/alerts/${item.dataset.alertId}/${path}`, payload);
  if (succeeded(status)) {
    window.location.reload();
    return;
  }
  for (const button of item.querySelectorAll('button')) button.disabled = false;
  showError(box, body.error || t('http.error', {status}));
}

function initAlerts(section) {
  section.addEventListener('click', (event) => {
    const item = event.target.closest('[data-alert]');
    if (!item) return;
    if (event.target.closest('[data-ack]')) {
      alertAction(item, 'ack', {});
      return;
    }
    const snooze = event.target.closest('[data-snooze-minutes]');
    if (snooze) alertAction(item, 'snooze', {minutes: Number(snooze.dataset.snoozeMinutes)});
  });
  section.addEventListener('submit', (event) => {
    const form = event.target.closest('[data-snooze-form]');
    if (!form) return;
    event.preventDefault();
    const item = form.closest('[data-alert]');
    const date = new Date(form.elements.until.value); // datetime-local: the browser's time zone
    if (Number.isNaN(date.getTime())) {
      showError(item.querySelector('[data-alert-error]'), 'choisissez une date et une heure');
      return;
    }
    alertAction(item, 'snooze', {until: date.toISOString()});
  });
}

// -- rules ------------------------------------------------------------------------------------------------------

const NUMBER_FIELDS = ['trigger', 'clear', 'for', 'clear_for', 'repeat'];
// Left empty: no separate clear threshold, no reminder (null); no duration (0).
const EMPTY = {clear: null, repeat: null, for: 0, clear_for: 0};

function formRule(form) {
  const rule = {};
  for (const name of ['name', 'metric', 'operator', 'severity', 'selector', 'devices']) {
    rule[name] = form.elements[name].value;
  }
  rule.name = rule.name.trim();
  rule.devices = rule.devices.trim();
  for (const name of NUMBER_FIELDS) {
    const text = form.elements[name].value.trim();
    if (text === '' && name in EMPTY) {
      rule[name] = EMPTY[name];
    } else {
      // A field the browser could not read as a number reaches the server as a string: it says which field.
      const value = form.elements[name].valueAsNumber;
      rule[name] = Number.isNaN(value) ? text : value;
    }
  }
  rule.enabled = form.elements.enabled.checked;
  return rule;
}

function fillForm(form, rule) {
  form.elements.id.value = rule.id;
  for (const name of ['name', 'metric', 'operator', 'severity', 'selector', 'devices']) {
    form.elements[name].value = rule[name] ?? '';
  }
  for (const name of NUMBER_FIELDS) {
    form.elements[name].value = rule[name] === null || rule[name] === undefined ? '' : String(rule[name]);
  }
  form.elements.enabled.checked = rule.enabled;
  form.querySelector('[data-rule-form-title]').textContent = t('rule.edit', {name: rule.name});
  form.querySelector('[data-rule-submit]').textContent = t('rule.save');
  form.querySelector('[data-rule-cancel]').hidden = false;
  form.scrollIntoView({block: 'start'});
  form.elements.name.focus();
}

function clearInvalid(form) {
  for (const field of form.querySelectorAll('[aria-invalid]')) field.removeAttribute('aria-invalid');
}

async function submitRule(form) {
  const box = form.querySelector('[data-rule-error]');
  showError(box, '');
  clearInvalid(form);
  const id = form.elements.id.value;
  const submit = form.querySelector('[data-rule-submit]');
  submit.disabled = true;
  const {status, body} = id
    ? await send('PUT', `/api/alerts/rules/${id}`, formRule(form))
    : await send('POST', '/api/alerts/rules', formRule(form));
  if (succeeded(status)) {
    window.location.reload();
    return;
  }
  submit.disabled = false;
  showError(box, body.error || t('http.error', {status}));
  const field = body.parameter && form.elements[body.parameter];
  if (field) {
    field.setAttribute('aria-invalid', 'true');
    field.focus();
  }
}

async function ruleAction(item, method, payload) {
  const {status, body} = await send(method, `/api/alerts/rules/${item.dataset.ruleId}`, payload);
  if (succeeded(status)) {
    window.location.reload();
    return;
  }
  window.alert(body.error || t('http.error', {status}));
}

function initRules(section) {
  const form = section.querySelector('[data-rule-form]');
  section.addEventListener('click', (event) => {
    const item = event.target.closest('[data-rule]');
    if (!item) return;
    const rule = JSON.parse(item.dataset.ruleJson);
    if (event.target.closest('[data-rule-edit]') && form) {
      fillForm(form, rule);
    } else if (event.target.closest('[data-rule-toggle]')) {
      ruleAction(item, 'PUT', {enabled: !rule.enabled});
    } else if (event.target.closest('[data-rule-delete]') && window.confirm(t('rule.delete', {name: rule.name}))) {
      ruleAction(item, 'DELETE');
    }
  });
  if (!form) return;
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    submitRule(form);
  });
  form.querySelector('[data-rule-cancel]').addEventListener('click', () => {
    form.reset();
    form.elements.id.value = '';
    clearInvalid(form);
    showError(form.querySelector('[data-rule-error]'), '');
    form.querySelector('[data-rule-form-title]').textContent = t('rule.add');
    form.querySelector('[data-rule-submit]').textContent = t('rule.addsubmit');
    form.querySelector('[data-rule-cancel]').hidden = true;
  });
}

const active = document.querySelector('[data-active-alerts]');
if (active) initAlerts(active);
const rules = document.querySelector('[data-rules]');
if (rules) initRules(rules);
