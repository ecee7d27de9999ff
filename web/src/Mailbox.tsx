import { useEffect, useRef, useState } from "preact/hooks";
import { type Api, ApiError, errorWords, type Message, type MessagePage, statusWords, type SyncStatus } from "./api";
import { formatDate, type Key, type Lang, type T } from "./i18n";
import { CRM_FOLDERS } from "./Settings";

// While a sync runs the status is asked for this often, for at most this long after the last request.
const POLL_MS = 1000;
const POLL_BUDGET_MS = 120_000;
const SYNCING_MS = 3_000;
const IDLE_REFRESH_MS = 20_000;

function folderLabel(t: T, crm: string): string {
  return (CRM_FOLDERS as readonly string[]).includes(crm) ? t(`crm_${crm}` as Key) : crm;
}

// Drawn, not emoji: a machine without an emoji font shows emoji as empty boxes.
function Icon({ kind, label }: { kind: "clip" | "lock"; label: string }) {
  const path =
    kind === "clip"
      ? "M16.5 6.5v10a4.5 4.5 0 0 1-9 0V5a3 3 0 0 1 6 0v10.5a1.5 1.5 0 0 1-3 0V6.5"
      : "M7 11V8a5 5 0 0 1 10 0v3M5.5 11h13v10h-13z";
  return (
    <svg class="mark" role="img" aria-label={label} viewBox="0 0 24 24" width="18" height="18">
      <title>{label}</title>
      <path d={path} fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" />
    </svg>
  );
}

function sender(message: Message): string {
  const first = message.from[0];
  return first ? first.name || first.email : "";
}

export function Mailbox({ t, lang, api, userId }: { t: T; lang: Lang; api: Api; userId: string }) {
  const base = api.user(userId);
  const [status, setStatus] = useState<SyncStatus | null>(null);
  const [folder, setFolder] = useState("inbox");
  const [page, setPage] = useState<MessagePage | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busyId, setBusyId] = useState<string | null>(null);
  const pollUntil = useRef(0);
  const folderRef = useRef(folder);
  folderRef.current = folder;

  const loadMessages = async (crm = folderRef.current) => {
    try {
      const found = await api.call<MessagePage>("GET", `${base}/messages?folder=${encodeURIComponent(crm)}&limit=50`);
      if (crm === folderRef.current) setPage(found);
    } catch (exc) {
      setError(errorWords(t, exc));
    }
  };

  const loadStatus = async (): Promise<SyncStatus | null> => {
    try {
      const found = await api.call<SyncStatus>("GET", `${base}/sync-status`);
      setStatus(found);
      return found;
    } catch (exc) {
      setError(errorWords(t, exc));
      return null;
    }
  };

  // One timer: fast while a sync runs or was just asked for, slow otherwise; stops with the view.
  useEffect(() => {
    let stopped = false;
    let timer = 0;
    let lastSeen: string | null = null;
    const tick = async () => {
      const found = await loadStatus();
      if (stopped) return;
      // A finished sync or a changed count: the list may have changed too.
      const seen = found && `${found.last_success_at}|${found.folders.map((f) => f.messages).join(",")}`;
      if (found && seen !== lastSeen) {
        lastSeen = seen;
        await loadMessages();
      }
      // Fast for a while after the user asked; a sync running on its own is followed more slowly.
      const delay =
        Date.now() < pollUntil.current ? POLL_MS : found?.state === "syncing" ? SYNCING_MS : IDLE_REFRESH_MS;
      timer = window.setTimeout(tick, delay);
    };
    tick();
    const wake = () => {
      window.clearTimeout(timer);
      tick();
    };
    addEventListener("mailsync:poll", wake);
    return () => {
      stopped = true;
      window.clearTimeout(timer);
      removeEventListener("mailsync:poll", wake);
    };
  }, [base]);

  useEffect(() => {
    setPage(null);
    loadMessages(folder);
  }, [folder, base]);

  const syncNow = async () => {
    setError(null);
    try {
      await api.call("POST", `${base}/sync`);
      pollUntil.current = Date.now() + POLL_BUDGET_MS;
      dispatchEvent(new Event("mailsync:poll"));
    } catch (exc) {
      setError(errorWords(t, exc));
    }
  };

  const more = async () => {
    if (!page?.next_cursor) return;
    try {
      const next = await api.call<MessagePage>(
        "GET",
        `${base}/messages?folder=${encodeURIComponent(folder)}&limit=50&cursor=${encodeURIComponent(page.next_cursor)}`,
      );
      setPage({ messages: [...page.messages, ...next.messages], next_cursor: next.next_cursor });
    } catch (exc) {
      setError(errorWords(t, exc));
    }
  };

  const act = async (message: Message, method: string, body?: unknown) => {
    setBusyId(message.id);
    setError(null);
    try {
      const changed = await api.call<Message>(method, `/v1/messages/${message.id}`, body);
      setPage((p) =>
        p && {
          ...p,
          messages: p.messages
            .map((m) => (m.id === message.id ? { ...m, ...changed } : m))
            .filter((m) => m.folder === folderRef.current),
        },
      );
      // The change reaches the mail server within seconds; the counts follow with the next status.
      pollUntil.current = Date.now() + 10_000;
      dispatchEvent(new Event("mailsync:poll"));
    } catch (exc) {
      // 409 means one thing per route: no trash mapped (delete), the message is gone (change).
      const conflict = exc instanceof ApiError && exc.code === "conflict";
      setError(conflict ? t(method === "DELETE" ? "err_no_trash" : "err_gone") : errorWords(t, exc));
    } finally {
      setBusyId(null);
    }
  };

  const rank = (crm: string) => {
    const at = (CRM_FOLDERS as readonly string[]).indexOf(crm);
    return at < 0 ? CRM_FOLDERS.length : at;
  };
  const folders = [...(status?.folders ?? [])].sort((a, b) => rank(a.crm_folder) - rank(b.crm_folder));
  const firstSync = folders.filter((f) => f.first_sync);
  const progressTotal = firstSync.reduce((n, f) => n + (f.first_sync?.total ?? 0), 0);
  const progressDone = firstSync.reduce((n, f) => n + (f.first_sync?.done ?? 0), 0);
  const accountProblem = status ? statusWords(t, status.account_status) : null;
  const stateKey = `state_${status?.state ?? "never"}` as Key;

  return (
    <div class="stack">
      <section class="card" aria-labelledby="sync-title">
        <div class="row spread">
          <h1 id="sync-title">{t("mailboxTitle")}</h1>
          <button type="button" onClick={syncNow}>
            {t("syncNow")}
          </button>
        </div>
        <p role="status" class="sync-line">
          <strong>{t("syncState")}:</strong> <span data-state={status?.state}>{t(stateKey)}</span>
          {status?.last_success_at && <> · {t("lastSuccess", { date: formatDate(lang, status.last_success_at) })}</>}
        </p>
        {progressTotal > 0 && (
          <div class="progress">
            <label for="first-sync">{t("firstSync", { done: progressDone, total: progressTotal })}</label>
            <progress id="first-sync" max={progressTotal} value={progressDone} />
          </div>
        )}
        {(status?.last_error || accountProblem) && (
          <p class="error">{t("lastError", { error: accountProblem ?? status?.last_error ?? "" })}</p>
        )}
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
      </section>

      <div class="mailbox">
        <nav class="card folders" aria-labelledby="folders-heading">
          <h2 id="folders-heading">{t("folders")}</h2>
          {status && folders.length === 0 && <p class="hint">{t("noFolders")}</p>}
          <ul>
            {folders.map((f) => (
              <li key={f.crm_folder}>
                <button
                  type="button"
                  class="folder"
                  aria-pressed={f.crm_folder === folder}
                  onClick={() => setFolder(f.crm_folder)}
                >
                  <span>{folderLabel(t, f.crm_folder)}</span>
                  <span class="count">
                    {f.messages ?? 0}
                    <span class="sr-only"> {t("messages")}</span>
                  </span>
                </button>
                {f.error && <p class="error small">{f.error}</p>}
              </li>
            ))}
          </ul>
        </nav>

        <section class="card messages" aria-labelledby="messages-heading">
          <h2 id="messages-heading">
            {folderLabel(t, folder)} <span class="hint">({t("messages")})</span>
          </h2>
          {page && page.messages.length === 0 && <p class="hint">{t("noMessages")}</p>}
          <ul class="message-list">
            {page?.messages.map((m) => (
              <MessageRow
                key={m.id}
                t={t}
                lang={lang}
                message={m}
                folders={folders.map((f) => f.crm_folder)}
                busy={busyId === m.id}
                onAct={act}
              />
            ))}
          </ul>
          {page?.next_cursor && (
            <button type="button" onClick={more}>
              {t("more")}
            </button>
          )}
        </section>
      </div>

      <Dossier t={t} lang={lang} api={api} />
    </div>
  );
}

function MessageRow({
  t,
  lang,
  message: m,
  folders,
  busy,
  onAct,
}: {
  t: T;
  lang: Lang;
  message: Message;
  folders: string[];
  busy: boolean;
  onAct: (m: Message, method: string, body?: unknown) => void;
}) {
  const others = folders.filter((f) => f !== m.folder);
  const [picked, setPicked] = useState("");
  // The folder list may arrive after the row: fall back to the first other folder until one is picked.
  const target = others.includes(picked) ? picked : (others[0] ?? "");
  const subject = m.subject || t("noSubject");
  const moveId = `move-${m.id}`;
  return (
    <li class={m.seen ? "message" : "message unread"} data-id={m.id}>
      <div class="meta">
        <span class="from">{sender(m)}</span>
        <span class="subject">
          {!m.seen && <span class="sr-only">{t("unread")}: </span>}
          {subject}
        </span>
        <span class="marks">
          {m.attachments.length > 0 && <Icon kind="clip" label={t("attachment")} />}
          {m.confidential && <Icon kind="lock" label={t("confidential")} />}
        </span>
        <time class="date" dateTime={m.date ?? m.internal_date}>
          {formatDate(lang, m.date ?? m.internal_date)}
        </time>
      </div>
      {m.sync_state === "pending" && <p class="hint small">{t("pending")}</p>}
      {m.sync_state === "failed" && m.last_op_error && <p class="error small">{m.last_op_error}</p>}
      <div class="row actions" role="group" aria-label={t("actionsFor", { subject })}>
        <button type="button" disabled={busy} onClick={() => onAct(m, "PATCH", { seen: !m.seen })}>
          {m.seen ? t("markUnread") : t("markRead")}
        </button>
        {others.length > 0 && (
          <>
            <label class="sr-only" for={moveId}>
              {t("moveTo")}
            </label>
            <select id={moveId} value={target} onChange={(e) => setPicked(e.currentTarget.value)}>
              {others.map((f) => (
                <option key={f} value={f}>
                  {folderLabel(t, f)}
                </option>
              ))}
            </select>
            <button type="button" disabled={busy || !target} onClick={() => onAct(m, "PATCH", { folder: target })}>
              {t("move")}
            </button>
          </>
        )}
        <button type="button" disabled={busy} onClick={() => onAct(m, "DELETE")}>
          {t("delete")}
        </button>
        <button
          type="button"
          disabled={busy}
          aria-pressed={m.confidential}
          onClick={() => onAct(m, "PATCH", { confidential: !m.confidential })}
        >
          {m.confidential ? t("unmarkConfidential") : t("markConfidential")}
        </button>
      </div>
    </li>
  );
}

function Dossier({ t, lang, api }: { t: T; lang: Lang; api: Api }) {
  const [address, setAddress] = useState("");
  const [found, setFound] = useState<Message[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  const search = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      const page = await api.call<{ messages: Message[] }>(
        "GET",
        `/v1/contacts/${encodeURIComponent(address.trim()).replace(/%40/g, "@")}/messages?limit=50`,
      );
      setFound(page.messages);
    } catch (exc) {
      setFound(null);
      setError(errorWords(t, exc));
    }
  };

  return (
    <section class="card" aria-labelledby="dossier-title">
      <h2 id="dossier-title">{t("dossierTitle")}</h2>
      <form onSubmit={search}>
        <label for="dossier-address">{t("dossierAddress")}</label>
        <div class="row">
          <input
            id="dossier-address"
            type="email"
            required
            value={address}
            onInput={(e) => setAddress(e.currentTarget.value)}
          />
          <button type="submit">{t("search")}</button>
        </div>
      </form>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {found && found.length === 0 && <p class="hint">{t("dossierNone")}</p>}
      {found && found.length > 0 && (
        <ul class="message-list dossier">
          {found.map((m) => (
            <li key={m.id} class="message">
              <div class="meta">
                <span class="from">{sender(m)}</span>
                <span class="subject">{m.subject || t("noSubject")}</span>
                <span class="marks">
                  {m.confidential && <Icon kind="lock" label={t("confidential")} />}
                </span>
                <time class="date">{formatDate(lang, m.date ?? m.internal_date)}</time>
              </div>
              <p class="hint small">
                {t("owner")} {m.owner} · {folderLabel(t, m.folder)}
              </p>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
