import { useEffect, useMemo, useState } from "preact/hooks";
import { Api, type AppConfig, tokenClaims } from "./api";
import { initialLang, type Lang, saveLang, translator } from "./i18n";
import { Mailbox } from "./Mailbox";
import { Settings } from "./Settings";
import { SignIn } from "./SignIn";
import { UserPicker } from "./UserPicker";

const TOKEN_STORE = "mailsync.token";
type View = "settings" | "mailbox";

function viewFromHash(): View {
  return location.hash === "#mailbox" ? "mailbox" : "settings";
}

export function App({ config }: { config: AppConfig }) {
  const [lang, setLang] = useState<Lang>(initialLang);
  const [token, setToken] = useState<string | null>(() => sessionStorage.getItem(TOKEN_STORE));
  const [view, setView] = useState<View>(viewFromHash);
  const [who, setWho] = useState("me");
  const t = useMemo(() => translator(lang), [lang]);

  useEffect(() => {
    document.documentElement.lang = lang;
    document.title = `${t("appName")} – ${view === "settings" ? t("navSettings") : t("navMailbox")}`;
  }, [lang, view, t]);
  useEffect(() => {
    const onHash = () => setView(viewFromHash());
    addEventListener("hashchange", onHash);
    return () => removeEventListener("hashchange", onHash);
  }, []);

  const claims = token ? tokenClaims(token) : null;
  const [expired, setExpired] = useState(false);
  const isAdmin = claims?.role === "admin";

  const signIn = (value: string) => {
    sessionStorage.setItem(TOKEN_STORE, value);
    setExpired(false);
    setToken(value);
  };
  const signOut = () => {
    sessionStorage.removeItem(TOKEN_STORE);
    setToken(null);
    setWho("me");
  };
  const api = useMemo(
    () =>
      token
        ? new Api(config.api, token, () => {
            signOut();
            setExpired(true);
          })
        : null,
    [config.api, token],
  );
  const changeLang = (value: Lang) => {
    saveLang(value);
    setLang(value);
  };

  return (
    <div class="shell">
      <header class="top">
        <span class="brand">{t("appName")}</span>
        {api && (
          <nav aria-label={t("appName")}>
            <a href="#settings" aria-current={view === "settings" ? "page" : undefined}>
              {t("navSettings")}
            </a>
            <a href="#mailbox" aria-current={view === "mailbox" ? "page" : undefined}>
              {t("navMailbox")}
            </a>
          </nav>
        )}
        <span class="spacer" />
        <label class="lang">
          <span>{t("language")}</span>
          <select value={lang} onChange={(e) => changeLang(e.currentTarget.value as Lang)}>
            <option value="en">English</option>
            <option value="nl">Nederlands</option>
          </select>
        </label>
        {api && (
          <span class="who">
            {t("signedInAs", { user: String(claims?.sub ?? "?"), tenant: String(claims?.tenant_id ?? "?") })}{" "}
            <button type="button" class="link" onClick={signOut}>
              {t("signOut")}
            </button>
          </span>
        )}
      </header>
      <main>
        {!api && expired && (
          <p class="error" role="alert">
            {t("err_unauthorized")}
          </p>
        )}
        {!api && <SignIn t={t} config={config} onToken={signIn} />}
        {api && isAdmin && (
          <UserPicker t={t} api={api} self={String(claims?.sub ?? "")} who={who} onOpen={setWho} />
        )}
        {api && view === "settings" && <Settings key={who} t={t} lang={lang} api={api} userId={who} />}
        {api && view === "mailbox" && <Mailbox key={who} t={t} lang={lang} api={api} userId={who} />}
      </main>
    </div>
  );
}
