// A small graphql-transport-ws client: connection_init carries the API key, then
// subscribe / next / error / complete, and pong to the server's pings. It reconnects
// (with growing pauses) and subscribes again; callers re-read with queries after a
// reconnect, since events sent while disconnected are lost (see docs/subscriptions.md).

const PROTOCOL = "graphql-transport-ws";

// Errors that end a subscription because events were lost on the way (the subscriber fell a
// buffer behind, or the server lost the event bus): subscribe again and re-read.
export function eventsWereLost(errors) {
  return [errors].flat().some((e) => ["SUBSCRIBER_TOO_SLOW", "EVENTS_MISSED"]
    .includes(e?.extensions?.code));
}

export class SubscriptionClient {
  constructor(key, { onStatus = () => {} } = {}) {
    this.key = key;
    this.onStatus = onStatus;
    this.nextId = 1;
    this.operations = new Map(); // id -> {payload, sink}
    this.socket = null;
    this.acknowledged = false;
    this.closed = false;
    this.retryMs = 500;
    this.connect();
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/graphql`;
  }

  connect() {
    this.acknowledged = false;
    this.onStatus("connecting");
    const socket = new WebSocket(this.url(), PROTOCOL);
    this.socket = socket;
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({
        type: "connection_init", payload: { Authorization: `Bearer ${this.key}` },
      }));
    });
    socket.addEventListener("message", (event) => this.receive(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => this.closedBy(event));
  }

  receive(message) {
    const op = message.id ? this.operations.get(message.id) : null;
    switch (message.type) {
      case "connection_ack":
        this.acknowledged = true;
        this.retryMs = 500;
        this.onStatus("live");
        for (const [id, entry] of this.operations) this.sendSubscribe(id, entry.payload);
        break;
      case "ping":
        this.socket.send(JSON.stringify({ type: "pong" }));
        break;
      case "next":
        if (op) {
          if (message.payload.errors) op.sink.error(message.payload.errors);
          else op.sink.next(message.payload.data);
        }
        break;
      case "error":
        if (op) {
          this.operations.delete(message.id);
          op.sink.error(message.payload);
        }
        break;
      case "complete":
        if (op) {
          this.operations.delete(message.id);
          op.sink.complete();
        }
        break;
      default:
        break;
    }
  }

  closedBy(event) {
    this.acknowledged = false;
    if (this.closed) return;
    if (event.code === 4403) { // the key was refused at connect: retrying will not help
      this.onStatus("refused");
      for (const { sink } of this.operations.values()) {
        sink.error([{ message: "the server refused this API key for live updates" }]);
      }
      this.operations.clear();
      return;
    }
    this.onStatus("reconnecting");
    setTimeout(() => { if (!this.closed) this.connect(); }, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 10000);
    for (const { sink } of this.operations.values()) sink.reconnected?.();
  }

  sendSubscribe(id, payload) {
    this.socket.send(JSON.stringify({ id, type: "subscribe", payload }));
  }

  // sink: {next(data), error(errors), complete(), reconnected?()}; returns an unsubscribe.
  subscribe(query, variables, sink) {
    const id = String(this.nextId++);
    const payload = { query, variables };
    this.operations.set(id, { payload, sink });
    if (this.acknowledged) this.sendSubscribe(id, payload);
    return () => {
      if (!this.operations.delete(id)) return;
      if (this.acknowledged) this.socket.send(JSON.stringify({ id, type: "complete" }));
    };
  }

  close() {
    this.closed = true;
    this.operations.clear();
    this.socket?.close(1000, "page left");
  }
}
