// The Mailsync HTTP API (docs/openapi.json): only routes and fields it documents.

import { hasKey, type Key, type T } from "./i18n";

export type Security = "ssl" | "starttls" | "none";
export type Protocol = "imap" | "pop3";

export interface MailSettings {
  user_id: string;
  host: string;
  port: number;
  username: string;
  security: Security;
  protocol: Protocol;
  fetch_enabled: boolean;
  keep_copy: boolean;
  remove_after_days?: number | null;
  incoming_confidential: boolean;
  outgoing_confidential: boolean;
  sync_window_days: number;
  password_set: boolean;
  status: string;
  last_error: string | null;
  auth: "password" | "oauth2";
  provider: "google" | "microsoft" | null;
  connected_at: string | null;
}

export interface Deployment {
  security: Security[];
  oauth_providers: ("google" | "microsoft")[];
  relay_addresses: boolean;
}

export interface ServerFolder {
  name: string;
  delimiter: string | null;
  flags: string[];
  special_use: string | null;
  suggested: string | null;
}

export interface FolderMap {
  folders: Record<string, string>;
  saved: boolean;
}

export interface Address {
  name: string | null;
  email: string;
}

export interface Message {
  id: string;
  folder: string;
  server_folder: string;
  seen: boolean;
  subject: string | null;
  from: Address[];
  date: string | null;
  internal_date: string;
  attachments: { filename: string | null }[];
  confidential: boolean;
  sync_state: "synced" | "pending" | "failed";
  last_op_error: string | null;
  owner?: string;
}

export interface MessagePage {
  messages: Message[];
  next_cursor: string | null;
}

export interface FolderSync {
  server_folder: string;
  crm_folder: string;
  messages: number | null;
  server_messages: number | null;
  first_sync: { total: number; done: number } | null;
  error: string | null;
}

export interface SyncStatus {
  state: "never" | "idle" | "syncing" | "failed";
  account_status: string;
  last_started_at: string | null;
  last_success_at: string | null;
  last_error: string | null;
  folders: FolderSync[];
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field: string | null = null,
  ) {
    super(message);
  }
}

/** The API's base URL: config.json beside index.html may name it (a static host); else this origin. */
export interface AppConfig {
  api: string;
  /** The local stack's sign-in as any user (devstack only; a deployment never serves it). */
  localSignIn: boolean;
  localUser?: string;
  localTenant?: string;
}

export async function loadConfig(): Promise<AppConfig> {
  try {
    const response = await fetch("./config.json", { cache: "no-store" });
    if (response.ok) {
      const body = await response.json();
      return {
        api: String(body.api ?? "").replace(/\/$/, ""),
        localSignIn: body.localSignIn === true,
        localUser: typeof body.localUser === "string" ? body.localUser : undefined,
        localTenant: typeof body.localTenant === "string" ? body.localTenant : undefined,
      };
    }
  } catch {
    // No config.json: the API is on this origin.
  }
  return { api: "", localSignIn: false };
}

export class Api {
  constructor(
    private readonly base: string,
    private readonly token: string,
    /** Called when the API refuses the token (expired, or signed for another deployment). */
    private readonly onUnauthorized: () => void = () => {},
  ) {}

  async call<R>(method: string, path: string, body?: unknown): Promise<R> {
    let response: Response;
    try {
      response = await fetch(this.base + path, {
        method,
        headers: {
          Authorization: `Bearer ${this.token}`,
          ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, "network", "network");
    }
    const text = await response.text();
    let data: any = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = data?.error;
      if (response.status === 401) {
        this.onUnauthorized();
        throw new ApiError(401, "unauthorized", error?.message ?? "Unauthorized");
      }
      throw new ApiError(
        response.status,
        String(error?.code ?? "other"),
        String(error?.message ?? response.statusText),
        error?.field ?? null,
      );
    }
    return data as R;
  }

  user(userId: string): string {
    return `/v1/users/${encodeURIComponent(userId)}`;
  }
}

/** Plain words for an API error: the help pages' wording for a failed login, field names as labelled. */
export function errorWords(t: T, error: unknown): string {
  if (!(error instanceof ApiError)) return t("err_other", { message: String(error) });
  if (error.code === "validation_error") {
    const fieldKey = `field_${error.field ?? ""}`;
    const field = hasKey(fieldKey) ? t(fieldKey as Key) : (error.field ?? "");
    // Pydantic's pattern messages mean nothing to a recruiter: the field name is enough then.
    const message = /pattern|regex/i.test(error.message) ? t("err_invalid") : error.message;
    return t("err_validation_error", { field, message });
  }
  const key = `err_${error.code}`;
  if (hasKey(key)) return t(key as Key);
  return t("err_other", { message: error.message });
}

/** An account status (mail-settings `status`, sync-status `account_status`) in words, or null when fine. */
export function statusWords(t: T, status: string | null | undefined): string | null {
  if (!status || status === "ok" || status === "pending" || status === "disabled") return null;
  const key = `err_${status}`;
  return hasKey(key) ? t(key as Key) : null;
}

/** The claims of a JWT, read only to show who is signed in (the API verifies the token). */
export function tokenClaims(token: string): Record<string, unknown> | null {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(json);
  } catch {
    return null;
  }
}

/** A user of the caller's tenant with mail settings (GET /v1/users, admins only). */
export interface TenantUser {
  user_id: string;
  username: string;
  protocol: Protocol;
  status: string;
}

export interface TenantUserPage {
  users: TenantUser[];
  next_cursor: string | null;
}

// A budget, not a rule: beyond this many users an admin types the id (the typed-id field stays).
const MAX_USER_PAGES = 10;

/** The tenant's users with mail settings, by user id, page after page up to a budget. */
export async function tenantUsers(api: Api): Promise<TenantUser[]> {
  const users: TenantUser[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < MAX_USER_PAGES; page++) {
    const query: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
    const result: TenantUserPage = await api.call<TenantUserPage>("GET", `/v1/users?limit=200${query}`);
    users.push(...result.users);
    cursor = result.next_cursor;
    if (!cursor) break;
  }
  return users;
}
