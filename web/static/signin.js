// The sign-in form every page shares: asks for an API key, checks it with `me { role }`
// and keeps it in sessionStorage only when its role may use this page.

import { ApiError, forgetKey, graphql, storeKey, storedKey } from "./api.js";

const ME = "{ me { name role } }";

// "an admin", "a reviewer or admin"
function roleList(roles) {
  const words = roles.length === 1 ? roles[0]
    : `${roles.slice(0, -1).join(", ")} or ${roles.at(-1)}`;
  return `${/^[aeiou]/.test(words) ? "an" : "a"} ${words}`;
}

async function check(key, roles, pageName) {
  let me;
  try {
    ({ me } = await graphql(ME, {}, key));
  } catch (exc) {
    if (exc instanceof ApiError && exc.code === "UNAUTHENTICATED") {
      return { error: "This API key is not valid or was revoked. Check it and try again." };
    }
    return { error: `Could not check the key: ${exc.message}` };
  }
  me = { ...me, role: me.role.toLowerCase() }; // the Role enum (ADMIN), read as a word
  if (!roles.includes(me.role)) {
    return {
      wrongRole: true,
      error: `This key ("${me.name}") has the role ${me.role}. The ${pageName} page needs `
        + `${roleList(roles)} key.`,
    };
  }
  return { me };
}

function showSignedIn(me) {
  document.getElementById("who-text").textContent = `${me.name} (${me.role})`;
  document.getElementById("who").hidden = false;
  document.getElementById("signout").addEventListener("click", () => {
    forgetKey();
    location.reload();
  });
}

// Resolves with {name, role} once a key of one of `roles` is signed in.
export async function signIn(roles, pageName) {
  const form = document.getElementById("signin");
  const input = document.getElementById("signin-key");
  const error = document.getElementById("signin-error");
  const saved = storedKey();
  if (saved) {
    const result = await check(saved, roles, pageName);
    if (result.me) {
      showSignedIn(result.me);
      return result.me;
    }
    if (!result.wrongRole) forgetKey(); // a key for another page stays for that page
    error.textContent = result.error;
  }
  document.getElementById("signin-view").hidden = false;
  input.focus();
  return new Promise((resolve) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) {
        error.textContent = "Enter an API key.";
        input.focus();
        return;
      }
      error.textContent = "Checking…";
      const result = await check(key, roles, pageName);
      if (!result.me) {
        error.textContent = result.error;
        input.select();
        return;
      }
      storeKey(key);
      input.value = "";
      error.textContent = "";
      document.getElementById("signin-view").hidden = true;
      showSignedIn(result.me);
      document.getElementById("main").focus(); // the form is gone: continue from the page
      resolve(result.me);
    });
  });
}
