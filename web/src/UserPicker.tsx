import { useEffect, useState } from "preact/hooks";
import { type Api, errorWords, type TenantUser, tenantUsers } from "./api";
import type { T } from "./i18n";

/** An administrator's choice of whose settings to open: a colleague with settings from the list,
 * or any user id typed (a colleague whose settings are not saved yet is in no list). */
export function UserPicker({
  t,
  api,
  self,
  who,
  onOpen,
}: {
  t: T;
  api: Api;
  self: string;
  who: string;
  onOpen: (userId: string) => void;
}) {
  const [users, setUsers] = useState<TenantUser[] | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [picked, setPicked] = useState(who);
  const [typed, setTyped] = useState("");

  useEffect(() => {
    let current = true;
    setLoadError(null);
    // Again after each open: settings an admin just saved for a colleague put them in the list.
    tenantUsers(api).then(
      (list) => current && setUsers(list),
      (error) => current && setLoadError(errorWords(t, error)),
    );
    return () => {
      current = false;
    };
  }, [api, who]);
  useEffect(() => setPicked(who), [who]);

  const listed = users ?? [];
  // The open user stays selectable even when the list does not hold them (typed, or beyond it).
  const extra = who !== "me" && !listed.some((u) => u.user_id === who) ? [who] : [];

  return (
    <div class="card picker">
      <form
        onSubmit={(e) => {
          e.preventDefault();
          onOpen(picked);
        }}
      >
        <label for="who-select">{t("whoseSettings")}</label>
        <div class="row">
          <select
            id="who-select"
            name="who"
            value={picked}
            aria-describedby="who-hint"
            aria-busy={users === null && !loadError}
            onChange={(e) => setPicked(e.currentTarget.value)}
          >
            <option value="me">{t("whoMe", { user: self })}</option>
            {extra.map((id) => (
              <option key={id} value={id}>
                {id}
              </option>
            ))}
            {listed.map((u) => (
              <option key={u.user_id} value={u.user_id}>
                {t("whoOption", { user: u.user_id, username: u.username })}
              </option>
            ))}
          </select>
          <button type="submit">{t("open")}</button>
        </div>
        <p id="who-hint" class="hint">
          {users === null && !loadError ? t("whoLoading") : t("whoseHint")}
        </p>
        {loadError && (
          <p class="error" role="alert">
            {loadError}
          </p>
        )}
      </form>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          const id = typed.trim();
          if (id) onOpen(id);
        }}
      >
        <label for="who">{t("whoTyped")}</label>
        <div class="row">
          <input
            id="who"
            name="who-typed"
            value={typed}
            autocomplete="off"
            aria-describedby="who-typed-hint"
            onInput={(e) => setTyped(e.currentTarget.value)}
          />
          <button type="submit">{t("openTyped")}</button>
        </div>
        <p id="who-typed-hint" class="hint">
          {t("whoTypedHint")}
        </p>
      </form>
    </div>
  );
}
