// The Audit logs page: reads the /v1 API with the bearer token the user pasted.
//
// - The token lives in sessionStorage (this tab only) and goes out as
//   `Authorization: Bearer`; requests omit credentials, so no cookie is ever involved.
// - The view (filters, page size, cursor) is the query string: a view can be
//   bookmarked, reloaded and shared, and the back button walks through it.
// - Every value that comes from an event reaches the page through textContent or a
//   text node, never as HTML; the page's CSP forbids inline script and eval anyway.
// - body[data-state] says what the page shows (loading, ready, empty, signin, …) and
//   body[data-loads] counts finished loads, for people and for the browser tests.
"use strict";

(function () {
  const TOKEN_KEY = "compartment-auditd.token";
  const FILTERS = ["from", "to", "event", "actor", "target_type", "project_id"];
  const LIMITS = ["25", "50", "100", "200", "500"];
  const DEFAULT_LIMIT = "100";
  const STATUSES = ["succeeded", "failed", "denied"];

  const $ = (id) => document.getElementById(id);
  let generation = 0; // a newer load makes older answers stale
  let loads = 0;
  let nextCursor = null;
  let currentScreen = null;

  // --- token -------------------------------------------------------------------

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // Storage disabled: nothing was kept.
    }
  }

  // --- location ----------------------------------------------------------------

  function orgFromPath() {
    const match = /^\/orgs\/([a-z0-9-]+)\/audit$/.exec(location.pathname);
    return match ? match[1] : null;
  }

  function orgPath(slug) {
    return "/orgs/" + encodeURIComponent(slug) + "/audit";
  }

  // The view in the query string: filters, page size, cursor and page number.
  function viewFromUrl() {
    const query = new URLSearchParams(location.search);
    const view = { filters: {}, limit: DEFAULT_LIMIT, cursor: null, page: 1 };
    for (const name of FILTERS) {
      const value = query.get(name);
      if (value) view.filters[name] = value;
    }
    const limit = query.get("limit");
    if (LIMITS.includes(limit)) view.limit = limit;
    const cursor = query.get("cursor");
    if (cursor) {
      view.cursor = cursor;
      const page = parseInt(query.get("page"), 10);
      view.page = page > 1 ? page : 2;
    }
    return view;
  }

  function filterQuery(view) {
    const query = new URLSearchParams();
    for (const name of FILTERS) {
      if (view.filters[name]) query.set(name, view.filters[name]);
    }
    return query;
  }

  function viewUrl(view) {
    const query = filterQuery(view);
    if (view.limit !== DEFAULT_LIMIT) query.set("limit", view.limit);
    if (view.cursor) {
      query.set("cursor", view.cursor);
      query.set("page", String(view.page));
    }
    const text = query.toString();
    return location.pathname + (text ? "?" + text : "");
  }

  function navigate(view) {
    history.pushState(null, "", viewUrl(view));
    route();
  }

  // --- screens -----------------------------------------------------------------

  function show(screen, state) {
    for (const section of document.querySelectorAll(".screen")) {
      section.hidden = section.id !== screen;
    }
    document.body.dataset.state = state;
    $("sign-out").hidden = !token();
    if (currentScreen !== screen) {
      currentScreen = screen;
      const heading = document.querySelector("#" + screen + " h1");
      if (heading) heading.focus({ preventScroll: true });
    }
  }

  function finished(state) {
    document.body.dataset.state = state;
    loads += 1;
    document.body.dataset.loads = String(loads);
  }

  function showSignIn() {
    $("org-label").textContent = "";
    $("all-orgs").hidden = true;
    show("screen-signin", "signin");
    $("token").focus();
    finished("signin");
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      return body && body.error ? body.error : {};
    } catch (_) {
      return {};
    }
  }

  // 401 and 403 have screens of their own; anything else is the error screen.
  async function problem(response, org) {
    const error = await errorOf(response);
    const message = typeof error.message === "string" ? error.message : "";
    if (response.status === 401) {
      forgetToken();
      $("e401-detail").textContent = message;
      show("screen-401", "unauthorized");
      finished("unauthorized");
    } else if (response.status === 403) {
      showForbidden(org, message);
    } else {
      failed("HTTP " + response.status + (message ? ": " + message : ""));
    }
  }

  function showForbidden(org, message) {
    $("e403-org").textContent = org === null ? "any organization" : org;
    $("e403-detail").textContent = message;
    $("e403-chooser").hidden = org === null;
    show("screen-403", "forbidden");
    finished("forbidden");
  }

  function failed(detail) {
    $("error-detail").textContent = detail;
    show("screen-error", "error");
    finished("error");
  }

  function api(path) {
    return fetch(path, {
      headers: { Authorization: "Bearer " + token(), Accept: "application/json" },
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
  }

  // --- the organization chooser (/) ---------------------------------------------

  async function chooser(load) {
    $("org-label").textContent = "";
    $("all-orgs").hidden = true;
    document.title = "Audit logs · compartment-auditd";
    document.body.dataset.state = "loading";
    const response = await api("/v1/orgs");
    if (load !== generation) return;
    if (!response.ok) return problem(response, null);
    const organizations = (await response.json()).organizations || [];
    if (load !== generation) return;
    if (organizations.length === 0) {
      return showForbidden(null, "The token is valid, but grants organization.audit.read in no organization.");
    }
    if (organizations.length === 1) {
      location.replace(orgPath(organizations[0].slug));
      return;
    }
    const list = $("org-list");
    list.replaceChildren();
    for (const organization of organizations) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = orgPath(organization.slug);
      link.textContent = organization.name;
      const slug = document.createElement("span");
      slug.className = "slug";
      slug.textContent = organization.slug;
      link.append(" ", slug);
      item.append(link);
      list.append(item);
    }
    show("screen-chooser", "chooser");
    finished("chooser");
  }

  // --- the events (/orgs/{org}/audit) -------------------------------------------

  function fillForm(view) {
    for (const name of FILTERS) $("f-" + name).value = view.filters[name] || "";
    $("f-limit").value = view.limit;
  }

  function text(className, value) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = value;
    return span;
  }

  // A cell with a main line and an optional second, quieter one.
  function cell(row, label, main, second) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (main === null || main === undefined || main === "") {
      td.append(text("none", "—"));
    } else if (typeof main === "string") {
      td.append(text("main", main));
    } else {
      td.append(main);
    }
    if (second) td.append(text("second", second));
    row.append(td);
    return td;
  }

  // A dotted name (event type) that may wrap after its dots, not inside a word.
  function dotted(value) {
    const span = document.createElement("span");
    span.className = "main";
    String(value).split(".").forEach((part, index) => {
      if (index > 0) span.append(".", document.createElement("wbr"));
      span.append(part);
    });
    return span;
  }

  function timeElement(iso) {
    const element = document.createElement("time");
    element.dateTime = iso;
    const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?Z$/.exec(iso);
    element.textContent = match ? match[1] + " " + match[2] + (match[3] || "") : iso;
    const date = new Date(iso);
    if (!Number.isNaN(date.getTime())) {
      element.title = date.toLocaleString(undefined, { timeZoneName: "short" }) + " (local time)";
    }
    return element;
  }

  function metadataElement(metadata) {
    const keys = metadata && typeof metadata === "object" ? Object.keys(metadata) : [];
    if (keys.length === 0) return null;
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = keys.length + (keys.length === 1 ? " key: " : " keys: ") + keys.join(", ");
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(metadata, null, 2);
    details.append(summary, pre);
    return details;
  }

  function eventRow(event) {
    const row = document.createElement("tr");
    row.dataset.eventId = String(event.id);
    cell(row, "Time (UTC)", timeElement(String(event.occurred_at)));
    cell(row, "Event type", dotted(event.event_type));
    const actor = event.actor || {};
    if (actor.email) {
      cell(row, "Actor", actor.email, [actor.type, actor.id].filter(Boolean).join(" · "));
    } else {
      cell(row, "Actor", actor.id, actor.type);
    }
    const target = event.target || {};
    cell(row, "Target", target.type, target.id);
    cell(row, "Project", event.project_id);
    const status = String(event.status);
    const badge = text("badge " + (STATUSES.includes(status) ? status : "other"), status);
    cell(row, "Status", badge);
    cell(row, "Metadata", metadataElement(event.metadata));
    return row;
  }

  async function events(org, load) {
    const view = viewFromUrl();
    fillForm(view);
    $("org-label").textContent = org;
    $("all-orgs").hidden = false;
    $("export-error").hidden = true;
    document.title = "Audit logs · " + org + " · compartment-auditd";
    show("screen-events", "loading");
    $("status").textContent = "Loading events…";
    $("events").setAttribute("aria-busy", "true");
    $("empty").hidden = true;
    $("next-page").disabled = true;
    $("first-page").disabled = view.cursor === null;
    const query = filterQuery(view);
    query.set("limit", view.limit);
    if (view.cursor) query.set("cursor", view.cursor);
    const response = await api("/v1/orgs/" + encodeURIComponent(org) + "/audit/events?" + query);
    if (load !== generation) return;
    if (response.status === 400) {
      const error = await errorOf(response);
      if (load !== generation) return;
      $("rows").replaceChildren();
      $("events").removeAttribute("aria-busy");
      $("status").textContent = "Not loaded: " + (error.message || "a filter is not valid") +
        (error.parameter ? " (" + error.parameter + ")" : "");
      finished("invalid");
      return;
    }
    if (!response.ok) return problem(response, org);
    const page = await response.json();
    if (load !== generation) return;
    const list = page.events || [];
    $("rows").replaceChildren(...list.map(eventRow));
    $("events").removeAttribute("aria-busy");
    nextCursor = page.next_cursor || null;
    $("next-page").disabled = nextCursor === null;
    $("page-label").textContent = "Page " + view.page;
    $("empty").hidden = list.length !== 0;
    $("status").textContent = list.length === 0
      ? "No events."
      : list.length + (list.length === 1 ? " event" : " events") + ", newest first" +
        (nextCursor ? "; more on the next page" : "");
    finished(list.length === 0 ? "empty" : "ready");
  }

  function contentDispositionName(value) {
    const match = /filename="([^"]+)"/.exec(value || "");
    return match ? match[1] : null;
  }

  async function exportEvents(format, button) {
    const org = orgFromPath();
    if (org === null) return;
    const query = filterQuery(viewFromUrl());
    query.set("format", format);
    const note = $("export-error");
    note.hidden = true;
    button.disabled = true;
    $("status").textContent = "Preparing the " + format.toUpperCase() + " export…";
    document.body.dataset.export = "running";
    try {
      const response = await api("/v1/orgs/" + encodeURIComponent(org) + "/audit/export?" + query);
      if (response.status === 401 || response.status === 403) return problem(response, org);
      if (!response.ok) {
        const error = await errorOf(response);
        note.textContent = error.message || "The export failed (HTTP " + response.status + ").";
        note.hidden = false;
        $("status").textContent = "Export not made.";
        document.body.dataset.export = "refused";
        return;
      }
      const blob = await response.blob();
      const name = contentDispositionName(response.headers.get("Content-Disposition")) ||
        "audit-" + org + "." + format;
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      link.hidden = true;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      $("status").textContent = "Downloaded " + name + ".";
      document.body.dataset.export = "done";
    } catch (_) {
      note.textContent = "The export was cut off before its end; nothing was saved. Try again.";
      note.hidden = false;
      document.body.dataset.export = "failed";
    } finally {
      button.disabled = false;
    }
  }

  // --- wiring ------------------------------------------------------------------

  async function route() {
    generation += 1;
    const load = generation;
    if (!token()) return showSignIn();
    const org = orgFromPath();
    try {
      if (org === null) await chooser(load);
      else await events(org, load);
    } catch (_) {
      if (load === generation) failed("The daemon did not answer; is it running?");
    }
  }

  function readForm() {
    const view = viewFromUrl();
    for (const name of FILTERS) {
      const value = $("f-" + name).value.trim();
      if (value) view.filters[name] = value;
      else delete view.filters[name];
    }
    view.limit = $("f-limit").value;
    view.cursor = null;
    view.page = 1;
    return view;
  }

  function start() {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      route();
    });
    $("sign-out").addEventListener("click", () => {
      forgetToken();
      $("rows").replaceChildren();
      $("org-list").replaceChildren();
      generation += 1;
      showSignIn();
    });
    $("e401-again").addEventListener("click", showSignIn);
    $("error-retry").addEventListener("click", route);
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      navigate(readForm());
    });
    $("f-limit").addEventListener("change", () => navigate(readForm()));
    $("clear").addEventListener("click", () => {
      const view = viewFromUrl();
      navigate({ filters: {}, limit: view.limit, cursor: null, page: 1 });
    });
    $("next-page").addEventListener("click", () => {
      if (nextCursor === null) return;
      const view = viewFromUrl();
      navigate({ filters: view.filters, limit: view.limit, cursor: nextCursor, page: view.page + 1 });
    });
    $("first-page").addEventListener("click", () => {
      const view = viewFromUrl();
      navigate({ filters: view.filters, limit: view.limit, cursor: null, page: 1 });
    });
    for (const button of document.querySelectorAll(".exports button")) {
      button.addEventListener("click", () => exportEvents(button.dataset.format, button));
    }
    window.addEventListener("popstate", route);
    route();
  }

  start();
})();
