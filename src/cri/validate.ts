/**
 * Request checks shared by handlers. Each failure is INVALID_ARGUMENT naming the field
 * by its proto path, so a person can see at once what to fix.
 */
import { invalidArgument } from '../common/errors.js';

/** Longest string berth accepts in an identifier-like field (ids, names, references). */
export const MAX_NAME_LENGTH = 4096;

/** Throws unless `value` is present (not undefined or null). */
export function required<T>(value: T | null | undefined, field: string): T {
  if (value === undefined || value === null) throw invalidArgument(`${field} is required`);
  return value;
}

/** Throws unless `value` is a non-empty string of bounded length without NUL bytes. */
export function requiredString(value: string | undefined, field: string, max = MAX_NAME_LENGTH): string {
  if (value === undefined || value === '') throw invalidArgument(`${field} is required`);
  return boundedString(value, field, max);
}

/** Throws when `value` is longer than `max` characters or holds NUL bytes. */
export function boundedString(value: string, field: string, max = MAX_NAME_LENGTH): string {
  if (value.length > max) throw invalidArgument(`${field} is ${value.length} characters long; the limit is ${max}`);
  if (value.includes('\0')) throw invalidArgument(`${field} contains a NUL byte`);
  return value;
}
