import { useEffect, useState } from "preact/hooks";
import {
  type Api,
  ApiError,
  type Deployment,
  errorWords,
  type FolderMap,
  type MailSettings,
  type Protocol,
  type Security,
  type ServerFolder,
  statusWords,
} from "./api";
import { formatDate, type Key, type Lang, type T } from "./i18n";

export const CRM_FOLDERS = ["inbox", "sent", "drafts", "trash", "archive"] as const;
const SECURITY_LABEL: Record<Security, Key> = { none: "securityNone", ssl: "securitySsl", starttls: "securityTls" };
const SECURITY_ORDER: Security[] = ["none", "ssl", "starttls"];

interface Form {
  host: string;
  port: string;
  username: string;
  password: string;
  protocol: Protocol;
  fetch_enabled: boolean;
  keep_copy: boolean;
  remove_after_days: string;
  security: Security;
  incoming_confidential: boolean;
  outgoing_confidential: boolean;
  sync_window_days: string;
}

const EMPTY: Form = {
  host: "",
  port: "",
  username: "",
  password: "",
  protocol: "imap",
  fetch_enabled: true,
  keep_copy: true,
  remove_after_days: "",
  security: "ssl",
  incoming_confidential: false,
  outgoing_confidential: false,
  sync_window_days: "30",
};

function formOf(saved: MailSettings): Form {
  return {
    host: saved.host,
    port: String(saved.port ?? ""),
    username: saved.username,
    password: "",
    protocol: saved.protocol,
    fetch_enabled: saved.fetch_enabled,
    keep_copy: saved.keep_copy,
    remove_after_days: saved.remove_after_days ? String(saved.remove_after_days) : "",
    security: saved.security,
    incoming_confidential: saved.incoming_confidential,
    outgoing_confidential: saved.outgoing_confidential,
    sync_window_days: String(saved.sync_window_days ?? 30),
  };
}

/** The request body: only fields the API documents; the password only when typed. */
function bodyOf(form: Form): Record<string, unknown> {
  const body: Record<string, unknown> = {
    host: form.host.trim(),
    username: form.username.trim(),
    security: form.security,
    protocol: form.protocol,
    fetch_enabled: form.fetch_enabled,
    keep_copy: form.protocol === "pop3" ? form.keep_copy : true,
    incoming_confidential: form.incoming_confidential,
    outgoing_confidential: form.outgoing_confidential,
    sync_window_days: Number(form.sync_window_days) || 30,
  };
  if (form.port.trim()) body.port = Number(form.port);
  if (form.password) body.password = form.password;
  if (form.protocol === "pop3" && form.keep_copy && form.remove_after_days.trim()) {
    body.remove_after_days = Number(form.remove_after_days);
  }
  return body;
}

function providerName(provider: "google" | "microsoft"): string {
  return provider === "google" ? "Google" : "Microsoft";
}

type Notice = { kind: "ok" | "error"; text: string } | null;

export function Settings({ t, lang, api, userId }: { t: T; lang: Lang; api: Api; userId: string }) {
  const base = api.user(userId);
  const [loading, setLoading] = useState(true);
  const [saved, setSaved] = useState<MailSettings | null>(null);
  const [deployment, setDeployment] = useState<Deployment | null>(null);
  const [form, setForm] = useState<Form>(EMPTY);
  const [busy, setBusy] = useState(false);
  const [notice, setNotice] = useState<Notice>(null);
  const [relay, setRelay] = useState<string | null>(null);
  const [copied, setCopied] = useState(false);
  const [oauthNotice, setOauthNotice] = useState<Notice>(null);

  const load = async () => {
    setLoading(true);
    try {
      const current = await api.call<MailSettings>("GET", `${base}/mail-settings`);
      setSaved(current);
      setForm(formOf(current));
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 404) {
        setSaved(null);
        setForm(EMPTY);
      } else {
        setNotice({ kind: "error", text: errorWords(t, exc) });
      }
    } finally {
      setLoading(false);
    }
  };

  useEffect(() => {
    load();
    api
      .call<Deployment>("GET", "/v1/deployment")
      .then((found) => {
        setDeployment(found);
        if (found.relay_addresses) {
          api
            .call<{ address: string }>("GET", `${base}/relay-address`)
            .then((r) => setRelay(r.address))
            .catch(() => setRelay(null));
        }
      })
      .catch(() => setDeployment({ security: ["ssl", "starttls"], oauth_providers: [], relay_addresses: false }));
    // Back from Google or Microsoft: the API's callback added ?result=...; with "confirm" the
    // code is in the fragment and only this user's JWT can finish the consent (a consent
    // finished in someone else's browser connects nothing).
    const params = new URLSearchParams(location.search);
    const result = params.get("result");
    if (result) {
      const carried = new URLSearchParams(location.hash.slice(1));
      // The code leaves the address bar before anything else happens.
      history.replaceState(null, "", location.pathname + "#settings");
      if (result === "confirm") {
        api
          .call<{ result: string; code: string | null }>("POST", "/v1/oauth/finish", {
            state: carried.get("oauth_state") ?? "",
            code: carried.get("oauth_code") ?? "",
          })
          .then((finished) => {
            setOauthNotice(
              finished.result === "connected"
                ? { kind: "ok", text: t("connectDone") }
                : { kind: "error", text: t("connectFailed", { code: finished.code ?? "?" }) },
            );
            load();
          })
          .catch((exc) => setOauthNotice({ kind: "error", text: errorWords(t, exc) }));
      } else {
        setOauthNotice(
          result === "connected"
            ? { kind: "ok", text: t("connectDone") }
            : { kind: "error", text: t("connectFailed", { code: params.get("code") ?? "?" }) },
        );
      }
    }
  }, [base]);

  const set = <K extends keyof Form>(key: K, value: Form[K]) => setForm((f) => ({ ...f, [key]: value }));

  const save = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setNotice(null);
    try {
      const stored = await api.call<MailSettings>("PUT", `${base}/mail-settings`, bodyOf(form));
      setSaved(stored);
      setForm(formOf(stored));
      // Saving stores the settings; the login is tried now so that a wrong password shows at once.
      await api.call("POST", `${base}/mail-settings/test`, {});
      setNotice({ kind: "ok", text: stored.protocol === "pop3" ? t("popSaved") : t("saved") });
    } catch (exc) {
      setNotice({ kind: "error", text: errorWords(t, exc) });
    } finally {
      setBusy(false);
    }
  };

  const connect = async (provider: "google" | "microsoft") => {
    setOauthNotice(null);
    try {
      const returnUrl = location.origin + location.pathname + "#settings";
      const started = await api.call<{ authorization_url: string }>("POST", `${base}/oauth/${provider}/start`, {
        return_url: returnUrl,
      });
      location.assign(started.authorization_url);
    } catch (exc) {
      setOauthNotice({ kind: "error", text: errorWords(t, exc) });
    }
  };

  const copyRelay = async () => {
    if (!relay) return;
    try {
      await navigator.clipboard.writeText(relay);
    } catch {
      // Without clipboard permission: select the text so that Ctrl+C copies it.
      (document.getElementById("relay") as HTMLInputElement | null)?.select();
    }
    setCopied(true);
    setTimeout(() => setCopied(false), 2000);
  };

  if (loading) return <p aria-busy="true">{t("loading")}</p>;

  const securities = SECURITY_ORDER.filter((s) => (deployment?.security ?? ["ssl", "starttls"]).includes(s));
  const isPop = form.protocol === "pop3";
  const accountProblem = saved ? statusWords(t, saved.status) : null;
  const notOffered = deployment
    ? (["google", "microsoft"] as const).filter((p) => !deployment.oauth_providers.includes(p)).map(providerName)
    : [];
  const passwordHint = saved?.auth === "oauth2" ? t("passwordOauthHint") : saved?.password_set ? t("passwordSavedHint") : null;

  return (
    <div class="stack">
      <form class="card settings" onSubmit={save} aria-labelledby="settings-title">
        <h1 id="settings-title">{t("settingsTitle")}</h1>
        {userId !== "me" && <p class="hint">{t("settingsFor", { user: userId })}</p>}
        {!saved && <p class="hint">{t("newUser")}</p>}
        {accountProblem && (
          <p class="error" role="status">
            {t("status")}: {accountProblem}
          </p>
        )}
        <div class="field">
          <label for="host">{t("host")}</label>
          <input
            id="host"
            name="host"
            required
            autocomplete="off"
            value={form.host}
            onInput={(e) => set("host", e.currentTarget.value)}
          />
        </div>
        <div class="field">
          <label for="port">{t("port")}</label>
          <input
            id="port"
            name="port"
            type="number"
            min={1}
            max={65535}
            inputMode="numeric"
            aria-describedby="port-hint"
            value={form.port}
            onInput={(e) => set("port", e.currentTarget.value)}
          />
          <p id="port-hint" class="hint">
            {t("portHint")}
          </p>
        </div>
        <div class="field">
          <label for="username">{t("username")}</label>
          <input
            id="username"
            name="username"
            required
            autocomplete="username"
            value={form.username}
            onInput={(e) => set("username", e.currentTarget.value)}
          />
        </div>
        <div class="field">
          <label for="password">{t("password")}</label>
          <input
            id="password"
            name="password"
            type="password"
            autocomplete="new-password"
            placeholder={saved?.password_set ? t("passwordSaved") : ""}
            aria-describedby={passwordHint ? "password-hint" : undefined}
            value={form.password}
            onInput={(e) => set("password", e.currentTarget.value)}
          />
          {passwordHint && (
            <p id="password-hint" class="hint">
              {passwordHint}
            </p>
          )}
        </div>
        <fieldset class="choice">
          <legend>{t("protocol")}</legend>
          <label>
            <input
              type="radio"
              name="protocol"
              value="imap"
              checked={form.protocol === "imap"}
              onChange={() => set("protocol", "imap")}
            />
            {t("imap")}
          </label>
          <label>
            <input
              type="radio"
              name="protocol"
              value="pop3"
              checked={isPop}
              onChange={() => set("protocol", "pop3")}
            />
            {t("pop")}
          </label>
        </fieldset>
        <div class="check">
          <input
            id="fetch_enabled"
            type="checkbox"
            checked={form.fetch_enabled}
            onChange={(e) => set("fetch_enabled", e.currentTarget.checked)}
          />
          <label for="fetch_enabled">{t("fetchEnabled")}</label>
        </div>
        <div class={isPop ? "check" : "check disabled"}>
          <input
            id="keep_copy"
            type="checkbox"
            disabled={!isPop}
            aria-describedby={isPop ? undefined : "keep-copy-hint"}
            checked={isPop ? form.keep_copy : true}
            onChange={(e) => set("keep_copy", e.currentTarget.checked)}
          />
          <label for="keep_copy">{t("keepCopy")}</label>
          {!isPop && (
            <p id="keep-copy-hint" class="hint">
              {t("keepCopyImapHint")}
            </p>
          )}
        </div>
        <div class={isPop && form.keep_copy ? "field indent" : "field indent disabled"}>
          <label for="remove_after_days">{t("removeAfter")}</label>
          <input
            id="remove_after_days"
            type="number"
            min={1}
            max={3650}
            inputMode="numeric"
            disabled={!isPop || !form.keep_copy}
            aria-describedby="remove-hint"
            value={form.remove_after_days}
            onInput={(e) => set("remove_after_days", e.currentTarget.value)}
          />
          <p id="remove-hint" class="hint">
            {t("removeAfterHint")}
          </p>
        </div>
        <div class="field">
          <label for="sync_window_days">{t("syncWindow")}</label>
          <input
            id="sync_window_days"
            type="number"
            min={1}
            max={365}
            inputMode="numeric"
            value={form.sync_window_days}
            onInput={(e) => set("sync_window_days", e.currentTarget.value)}
          />
        </div>
        <fieldset class="choice">
          <legend>{t("security")}</legend>
          {securities.map((s) => (
            <label key={s}>
              <input
                type="radio"
                name="security"
                value={s}
                checked={form.security === s}
                onChange={() => set("security", s)}
              />
              {t(SECURITY_LABEL[s])}
            </label>
          ))}
          {form.security === "none" && <p class="hint">{t("securityNoneHint")}</p>}
        </fieldset>
        <fieldset class="choice">
          <legend>{t("confidentialTitle")}</legend>
          <label>
            <input
              type="checkbox"
              name="incoming_confidential"
              checked={form.incoming_confidential}
              onChange={(e) => set("incoming_confidential", e.currentTarget.checked)}
            />
            {t("incomingConfidential")}
          </label>
          <label>
            <input
              type="checkbox"
              name="outgoing_confidential"
              checked={form.outgoing_confidential}
              onChange={(e) => set("outgoing_confidential", e.currentTarget.checked)}
            />
            {t("outgoingConfidential")}
          </label>
        </fieldset>
        <div class="actions">
          <button type="submit" class="primary" disabled={busy}>
            {busy ? t("saving") : t("save")}
          </button>
        </div>
        <div aria-live="polite">
          {notice && (
            <p class={notice.kind === "ok" ? "ok" : "error"} role={notice.kind === "error" ? "alert" : "status"}>
              {notice.text}
            </p>
          )}
        </div>
      </form>

      <FolderEditor t={t} api={api} base={base} enabled={saved !== null && saved.protocol !== "pop3"} pop={saved?.protocol === "pop3"} />

      <section class="card" aria-labelledby="connect-title">
        <h2 id="connect-title">{t("connectTitle")}</h2>
        <p class="hint">{t("connectIntro")}</p>
        {saved?.auth === "oauth2" && saved.provider && (
          <p class="ok">
            {t("connectedWith", {
              provider: providerName(saved.provider),
              date: formatDate(lang, saved.connected_at),
            })}
          </p>
        )}
        <div class="actions">
          {(["google", "microsoft"] as const).map((provider) => {
            const offered = deployment?.oauth_providers.includes(provider) ?? false;
            return (
              <button
                key={provider}
                type="button"
                disabled={!offered}
                aria-describedby={offered ? undefined : "connect-off"}
                onClick={() => connect(provider)}
              >
                {provider === "google" ? t("connectGoogle") : t("connectMicrosoft")}
              </button>
            );
          })}
        </div>
        {notOffered.length > 0 && (
          <p id="connect-off" class="hint">
            {t("connectNotOffered", { providers: notOffered.join(", ") })}
          </p>
        )}
        {oauthNotice && (
          <p class={oauthNotice.kind === "ok" ? "ok" : "error"} role="status">
            {oauthNotice.text}
          </p>
        )}
      </section>

      {relay && (
        <section class="card" aria-labelledby="relay-title">
          <h2 id="relay-title">{t("relayTitle")}</h2>
          <label for="relay">{t("relayIntro")}</label>
          <div class="row">
            <input id="relay" readOnly value={relay} onFocus={(e) => e.currentTarget.select()} />
            <button type="button" onClick={copyRelay}>
              {copied ? t("copied") : t("copy")}
            </button>
          </div>
        </section>
      )}
    </div>
  );
}

function FolderEditor({ t, api, base, enabled, pop }: { t: T; api: Api; base: string; enabled: boolean; pop: boolean }) {
  const [open, setOpen] = useState(false);
  const [busy, setBusy] = useState(false);
  const [serverFolders, setServerFolders] = useState<ServerFolder[]>([]);
  const [map, setMap] = useState<Record<string, string>>({});
  const [notice, setNotice] = useState<Notice>(null);

  const edit = async () => {
    setBusy(true);
    setNotice(null);
    try {
      const [listed, current] = await Promise.all([
        api.call<{ folders: ServerFolder[] }>("GET", `${base}/server-folders`),
        api.call<FolderMap>("GET", `${base}/folder-map`),
      ]);
      const chosen: Record<string, string> = { ...current.folders };
      for (const crm of CRM_FOLDERS) {
        const suggested = listed.folders.find((f) => f.suggested === crm);
        if (!chosen[crm] && suggested) chosen[crm] = suggested.name;
      }
      setServerFolders(listed.folders);
      setMap(chosen);
      setOpen(true);
    } catch (exc) {
      setNotice({ kind: "error", text: errorWords(t, exc) });
    } finally {
      setBusy(false);
    }
  };

  const save = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setNotice(null);
    try {
      const linked = Object.fromEntries(Object.entries(map).filter(([, server]) => server));
      const stored = await api.call<FolderMap>("PUT", `${base}/folder-map`, linked);
      setMap(stored.folders);
      setNotice({ kind: "ok", text: t("foldersSaved") });
    } catch (exc) {
      setNotice({ kind: "error", text: errorWords(t, exc) });
    } finally {
      setBusy(false);
    }
  };

  const crmFolders = [...CRM_FOLDERS, ...Object.keys(map).filter((k) => !(CRM_FOLDERS as readonly string[]).includes(k))];
  return (
    <section class="card" aria-labelledby="folders-title">
      <h2 id="folders-title">{t("foldersTitle")}</h2>
      <div class="actions">
        <button
          type="button"
          onClick={edit}
          disabled={!enabled || busy}
          aria-describedby={enabled ? undefined : "folders-hint"}
        >
          {t("editFolders")}
        </button>
      </div>
      {!open && !enabled && (
        <p id="folders-hint" class="hint">
          {pop ? t("editFoldersPopHint") : t("editFoldersHint")}
        </p>
      )}
      {open && (
        <form onSubmit={save}>
          <p class="hint">{t("foldersIntro")}</p>
          <div class="folder-grid">
            {crmFolders.map((crm) => {
              const key = `crm_${crm}` as Key;
              const label = (CRM_FOLDERS as readonly string[]).includes(crm) ? t(key) : crm;
              return (
                <div class="field" key={crm}>
                  <label for={`map-${crm}`}>{label}</label>
                  <select
                    id={`map-${crm}`}
                    name={crm}
                    value={map[crm] ?? ""}
                    onChange={(e) => setMap((m) => ({ ...m, [crm]: e.currentTarget.value }))}
                  >
                    <option value="">{t("notLinked")}</option>
                    {serverFolders.map((f) => (
                      <option key={f.name} value={f.name}>
                        {f.name}
                      </option>
                    ))}
                  </select>
                </div>
              );
            })}
          </div>
          <div class="actions">
            <button type="submit" class="primary" disabled={busy}>
              {t("saveFolders")}
            </button>
          </div>
        </form>
      )}
      <div aria-live="polite">
        {notice && (
          <p class={notice.kind === "ok" ? "ok" : "error"} role={notice.kind === "error" ? "alert" : "status"}>
            {notice.text}
          </p>
        )}
      </div>
    </section>
  );
}
