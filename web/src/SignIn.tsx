import { useState } from "preact/hooks";
import type { AppConfig } from "./api";
import type { T } from "./i18n";

/** A CRM hands the app its user's token; on the local stack a developer signs in as anyone. */
export function SignIn({ t, config, onToken }: { t: T; config: AppConfig; onToken: (token: string) => void }) {
  const [token, setToken] = useState("");
  const [user, setUser] = useState(config.localUser ?? "alice");
  const [tenant, setTenant] = useState(config.localTenant ?? "acme");
  const [role, setRole] = useState("user");
  const [error, setError] = useState<string | null>(null);

  const localSignIn = async (e: Event) => {
    e.preventDefault();
    setError(null);
    try {
      const response = await fetch(`${config.api}/local/token`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user, tenant, role }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body?.error?.message ?? response.statusText);
      onToken(body.token);
    } catch (exc) {
      setError(t("err_other", { message: String((exc as Error).message ?? exc) }));
    }
  };

  return (
    <section class="card signin" aria-labelledby="signin-title">
      <h1 id="signin-title">{t("signInTitle")}</h1>
      {config.localSignIn && (
        <form onSubmit={localSignIn}>
          <fieldset>
            <legend>{t("localSignIn")}</legend>
            <div class="field">
              <label for="local-user">{t("localUser")}</label>
              <input id="local-user" value={user} required onInput={(e) => setUser(e.currentTarget.value)} />
            </div>
            <div class="field">
              <label for="local-tenant">{t("localTenant")}</label>
              <input id="local-tenant" value={tenant} required onInput={(e) => setTenant(e.currentTarget.value)} />
            </div>
            <div class="field">
              <label for="local-role">{t("localRole")}</label>
              <select id="local-role" value={role} onChange={(e) => setRole(e.currentTarget.value)}>
                <option value="user">{t("roleUser")}</option>
                <option value="admin">{t("roleAdmin")}</option>
              </select>
            </div>
            <button type="submit">{t("signIn")}</button>
          </fieldset>
        </form>
      )}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (token.trim()) onToken(token.trim());
        }}
      >
        <div class="field">
          <label for="token">{t("signInToken")}</label>
          <textarea id="token" rows={3} value={token} onInput={(e) => setToken(e.currentTarget.value)} />
        </div>
        <button type="submit">{t("signInWithToken")}</button>
      </form>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </section>
  );
}
