import type { Db } from './database.js';

/**
 * Daemon-wide settings that kubelet pushes at run time and that must survive a
 * restart (today: the pod CIDR from UpdateRuntimeConfig). Owns `runtime_settings`.
 */
export class RuntimeSettingsRepository {
  private readonly getStmt;
  private readonly putStmt;
  private readonly delStmt;

  constructor(db: Db) {
    this.getStmt = db.prepare<[string], { value: string }>('SELECT value FROM runtime_settings WHERE key = ?');
    this.putStmt = db.prepare<[string, string, number]>(
      'INSERT INTO runtime_settings (key, value, updated_at) VALUES (?, ?, ?) ' +
        'ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at',
    );
    this.delStmt = db.prepare<[string]>('DELETE FROM runtime_settings WHERE key = ?');
  }

  /** The pod CIDR(s) kubelet gave, comma-separated as it sends them, or '' if none. */
  podCidr(): string {
    return this.getStmt.get('pod_cidr')?.value ?? '';
  }

  setPodCidr(cidr: string): void {
    if (cidr === '') this.delStmt.run('pod_cidr');
    else this.putStmt.run('pod_cidr', cidr, Date.now());
  }
}
