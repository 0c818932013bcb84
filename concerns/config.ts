/**
 * The one configuration: the core settings (lib/config.ts) plus each concern's own,
 * parsed together before anything is opened. `Config.concerns.<name>` is what that concern's
 * factory receives; no concern reads the environment itself. A bad value of any variable
 * throws one CONFIG_INVALID naming it (main.ts exits 2).
 * @module
 */
import { type ConfigSources, type CoreConfig, loadConfigWith } from "../lib/config.ts";
import { ACCESS_CONFIG } from "../api/authz/settings.ts";
import { BACKUP_CONFIG } from "../actors/backup/settings.ts";
import { FAILOVER_CONFIG } from "../actors/failover/settings.ts";
import { METRICS_CONFIG } from "../actors/metrics/settings.ts";
import { SESSIONS_CONFIG } from "../actors/sessions/settings.ts";
import { SYNC_CONFIG } from "../actors/sync/settings.ts";
import { LIMITS_CONFIG } from "../lib/limits.ts";

/** Each concern's part of the configuration, in the order docs/configuration.md lists them. */
export const CONCERN_CONFIG = {
  access: ACCESS_CONFIG,
  sessions: SESSIONS_CONFIG,
  sync: SYNC_CONFIG,
  metrics: METRICS_CONFIG,
  failover: FAILOVER_CONFIG,
  backup: BACKUP_CONFIG,
  limits: LIMITS_CONFIG,
};

/** The parsed settings of every concern, by concern name. */
export type ConcernSettings = {
  [K in keyof typeof CONCERN_CONFIG]: ReturnType<typeof CONCERN_CONFIG[K]["parse"]>;
};

/** The validated configuration an instance starts from. */
export interface Config extends CoreConfig {
  /** Each concern's settings. */
  concerns: ConcernSettings;
}

/**
 * Parses and validates the whole configuration from `sources` (default: the process's
 * environment and arguments); throws CONFIG_INVALID naming every bad variable.
 */
export function loadConfig(sources: ConfigSources = {}): Config {
  return loadConfigWith(sources, CONCERN_CONFIG);
}
