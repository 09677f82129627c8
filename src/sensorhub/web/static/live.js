// /capteurs's connection to the broker: MQTT.js over WebSockets on the host the page came from, subscribe only.
// It says what happens (ready, lost, message); what the page shows of it is capteurs.js's.
import {protocol} from './common.js';

// Private mode: the broker's WebSockets port opens only with a token from the web server, valid 5 minutes for
// opening a connection; the page keeps a fresh one for its reconnections.
const TOKEN_REFRESH_MS = 60 * 1000;

// The token the page came with (data-live-token), refreshed from GET /api/live-token while the visitor is logged
// in; `sessionEnded` once the server says they are not (401): reconnecting is then pointless.
function liveToken(initial) {
  const state = {token: initial, sessionEnded: false};
  if (!initial) return state;
  setInterval(async () => {
    try {
      const response = await fetch('/api/live-token', {cache: 'no-store', credentials: 'same-origin'});
      if (response.status === 401) {
        state.sessionEnded = true;
        return;
      }
      if (response.ok) state.token = (await response.json()).token;
    } catch (err) {
      console.warn('live token:', err.message); // the web server is away: keep the last one meanwhile
    }
  }, TOKEN_REFRESH_MS);
  return state;
}

// Connect to the broker the container names (data-ws-port, data-wss-port, data-keepalive, data-live-token).
// `onReady()` after each (re)connection once subscribed; `onLost({url, everConnected, sessionEnded})` when the
// connection fails or drops (MQTT.js tries again every 2 s); `onMessage(topic, text)` for each message.
// Without MQTT.js (vendor file missing) it returns false at once.
export function connectLive(container, {onReady, onLost, onMessage}) {
  if (!window.mqtt) return false;
  // A page that came over HTTPS must use the secure WebSockets listener (browsers refuse ws: from https:).
  const secure = window.location.protocol === 'https:';
  const port = secure ? container.dataset.wssPort : container.dataset.wsPort;
  const url = `${secure ? 'wss' : 'ws'}://${window.location.hostname}:${port}`;
  const access = liveToken(container.dataset.liveToken || '');
  const client = window.mqtt.connect(url, {
    transformWsUrl: (wsUrl) => (access.token ? `${wsUrl}?token=${encodeURIComponent(access.token)}` : wsUrl),
    protocolVersion: 5,
    clean: true,
    keepalive: Number(container.dataset.keepalive) || 5,
    reconnectPeriod: 2000,
    connectTimeout: 5000,
    resubscribe: false,
    clientId: `sensorhub-web-${Math.random().toString(16).slice(2, 10)}`,
  });
  let everConnected = false;
  const lost = () => onLost({url, everConnected, sessionEnded: access.sessionEnded});
  client.on('connect', () => {
    client.subscribe(protocol().subscriptions, (err) => {
      if (err) {
        lost();
        return;
      }
      everConnected = true;
      onReady();
    });
  });
  client.on('close', lost);
  client.on('offline', lost);
  client.on('error', (err) => console.warn('MQTT:', err.message));
  const decoder = new TextDecoder();
  client.on('message', (topic, payload) => onMessage(topic, decoder.decode(payload)));
  return true;
}
