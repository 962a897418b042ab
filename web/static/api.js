// GraphQL over HTTP with the signed-in key, and the key's place in sessionStorage
// (never in the URL, gone when the tab closes).

const KEY_ITEM = "arbiter.apiKey";

export function storedKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_ITEM, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
}

// A GraphQL error with its stable code (extensions.code), e.g. LEASE_EXPIRED.
export class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

export async function graphql(query, variables = {}, key = storedKey()) {
  let response;
  try {
    response = await fetch("/graphql", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
      body: JSON.stringify({ query, variables }),
    });
  } catch (exc) {
    throw new ApiError(`The server cannot be reached (${exc.message}).`, "NETWORK", 0);
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`The server answered ${response.status} without JSON.`, "HTTP",
      response.status);
  }
  if (body.errors?.length) {
    const [first] = body.errors;
    throw new ApiError(first.message, first.extensions?.code ?? "ERROR", response.status);
  }
  return body.data;
}
