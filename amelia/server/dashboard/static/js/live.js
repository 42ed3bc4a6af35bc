// The live event stream (/ws/events): subscribe, answer heartbeats, reconnect with `since`.
//
// Protocol (routes/websocket.py): the server sends {type:"event", payload}, {type:"ping"}
// (we answer {type:"pong"}), {type:"backfill_complete"} and {type:"backfill_expired"}. After
// a drop we reconnect with since=<last stored event id>, so the server replays what we
// missed; events are also de-duplicated by id here.

const indicator = () => document.getElementById("live-status");

function showStatus(state) {
  const el = indicator();
  if (!el) return;
  el.dataset.state = state;
  el.hidden = state === "off";
  el.textContent =
    { live: "Live", connecting: "Connecting…", retrying: "Reconnecting…" }[state] || "";
}

export class LiveEvents {
  /**
   * @param {object} options
   * @param {string|null} options.workflowId only this workflow's events (else every workflow)
   * @param {string|null} options.since id of the last stored event already shown
   * @param {(event: object) => void} options.onEvent called once per new event
   * @param {(reason: string) => void} [options.onResync] the page should reload its state
   */
  constructor({ workflowId = null, since = null, onEvent, onResync = () => {} }) {
    this.workflowId = workflowId;
    this.since = since;
    this.onEvent = onEvent;
    this.onResync = onResync;
    this.seen = new Set();
    this.socket = null;
    this.stopped = false;
    this.retries = 0;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close(1000, "page left");
      this.socket = null;
    }
    showStatus("off");
  }

  /** Mark events as already shown (those the page loaded over HTTP). */
  markSeen(events) {
    for (const event of events) {
      this.seen.add(event.id);
      if (event.sequence > 0) this.remember(event);
    }
  }

  // The server backfills only the anchor's own workflow, so `since` serves a one-workflow
  // stream; an all-workflows stream reloads its page after a reconnect instead.
  remember(event) {
    if (this.workflowId) this.since = event.id;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = this.since ? `?since=${encodeURIComponent(this.since)}` : "";
    showStatus(this.retries ? "retrying" : "connecting");
    const socket = new WebSocket(`${scheme}://${location.host}/ws/events${query}`);
    this.socket = socket;
    socket.onopen = () => {
      if (this.workflowId) {
        socket.send(JSON.stringify({ type: "subscribe", workflow_id: this.workflowId }));
      }
      if (this.retries && !this.since) this.onResync("reconnected");
      this.retries = 0;
      showStatus("live");
    };
    socket.onmessage = (message) => this.receive(socket, message.data);
    socket.onclose = () => {
      if (this.stopped || this.socket !== socket) return;
      this.socket = null;
      this.retries += 1;
      showStatus("retrying");
      const delay = Math.min(1000 * 2 ** (this.retries - 1), 10_000);
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  receive(socket, text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.type === "ping") {
      socket.send(JSON.stringify({ type: "pong" }));
    } else if (message.type === "backfill_expired") {
      // The anchor event is gone (retention): reload the page's state, stream from now on.
      this.since = null;
      this.onResync("expired");
    } else if (message.type === "event" && message.payload) {
      const event = message.payload;
      if (this.workflowId && event.workflow_id !== this.workflowId) return;
      if (event.sequence > 0) {
        if (this.seen.has(event.id)) return;
        this.seen.add(event.id);
        this.remember(event);
      }
      this.onEvent(event);
    }
  }
}
