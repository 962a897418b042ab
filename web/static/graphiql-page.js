// GraphiQL on /graphql: queries and mutations over HTTP, subscriptions over
// graphql-transport-ws on the same URL. Every request needs an API key: the headers pane
// starts with the Authorization header to fill in; the same header goes in the websocket's
// connection_init payload, which is where subscriptions take the key. Headers are not
// persisted (a key never lands in localStorage).

const URL_PATH = window.location.origin + window.location.pathname;
const WS_URL = URL_PATH.replace(/^http/, "ws");
const PLACEHOLDER = "<your API key>";
const HEADERS = `{\n  "Authorization": "Bearer ${PLACEHOLDER}"\n}`;
const QUERY = `# Arbiter's GraphQL API. Put your API key in the Headers pane below, then run:
{
  me { name role }
}
`;

// One fetcher per distinct headers: subscriptions authenticate when the websocket
// connects, so a changed key needs a new connection.
const fetchers = new Map();

function fetcherFor(headers) {
  const key = JSON.stringify(headers || {});
  if (!fetchers.has(key)) {
    fetchers.set(key, GraphiQL.createFetcher({
      url: URL_PATH,
      subscriptionUrl: WS_URL,
      wsConnectionParams: headers || {},
    }));
  }
  return fetchers.get(key);
}

// Until a key is in the headers pane, say so here instead of asking the server (which
// would answer 401): the schema loads with the "Re-fetch GraphQL schema" button once it is.
function withoutKey(headers) {
  const value = headers && (headers.Authorization || headers.authorization);
  return !value || value.includes(PLACEHOLDER);
}

function fetcher(params, options) {
  const headers = options && options.headers;
  if (withoutKey(headers)) {
    return Promise.resolve({ errors: [{
      message: "Put your API key in the Headers pane: \"Authorization\": \"Bearer <key>\"",
      extensions: { code: "UNAUTHENTICATED" },
    }] });
  }
  return fetcherFor(headers)(params, options);
}

ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {
    fetcher,
    defaultQuery: QUERY,
    defaultHeaders: HEADERS,
    headers: HEADERS,
    defaultEditorToolsVisibility: "headers",
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: false,
    inputValueDeprecation: true,
  }),
);
