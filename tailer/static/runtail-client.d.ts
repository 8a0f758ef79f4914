/**
 * Types for runtail-client.js: a drop-in for the React app's
 * `createTrainingProgressWebSocket` (src/services/websocket.ts) that follows
 * one experiment on `/experiments/<id>`, resumes with `since`, reconnects
 * without a limit and drops duplicates by `seq`.
 */

/** A message as the tailer sends it: the recorded object plus `experiment_id` and `seq`. */
export interface RuntailMessage<T = unknown> {
  type: string;
  data: T;
  timestamp?: string;
  experiment_id?: string;
  /** 0-based line number in the run's file; absent on log_reset, pong and replay_end. */
  seq?: number;
  [key: string]: unknown;
}

export interface RuntailClientOptions {
  /** Base URL of the tailer, e.g. "ws://localhost:8765" (default: see getWebSocketBaseUrl). */
  url?: string;
  /** Sent as ?token= when the tailer runs with --token. */
  token?: string;
  /** Start after this seq (default -1: the run from its first line). */
  since?: number;
  /** First reconnect delay in ms (default 500), doubled up to maxReconnectDelay (default 10000). */
  reconnectDelay?: number;
  maxReconnectDelay?: number;
  /** ms between {"type":"ping"} frames (default 30000). */
  pingInterval?: number;
}

/** Payloads of the connection events; message events get the message's `data`. */
export interface RuntailConnectionEvents {
  connected: { experiment_id: string };
  /** Fired when an open connection closes (not for failed attempts). */
  disconnected: { code: number; reason: string };
  reconnecting: { attempt: number; delay: number };
  reconnected: Record<string, never>;
}

export type RuntailListener<T = any> = (data: T, message?: RuntailMessage<T>) => void;

export declare class TrainingProgressWebSocket {
  constructor(experimentId: string, options?: RuntailClientOptions);
  readonly experimentId: string;
  /** The last seq delivered to listeners (-1: none yet). */
  readonly lastSeq: number;
  connect(): void;
  disconnect(): void;
  isConnectedState(): boolean;
  on<K extends keyof RuntailConnectionEvents>(
    event: K,
    listener: RuntailListener<RuntailConnectionEvents[K]>,
  ): () => void;
  on(event: string, listener: RuntailListener): () => void;
  off<K extends keyof RuntailConnectionEvents>(
    event: K,
    listener: RuntailListener<RuntailConnectionEvents[K]>,
  ): void;
  off(event: string, listener: RuntailListener): void;
  removeAllListeners(event?: string): void;
}

export declare function createTrainingProgressWebSocket(
  experimentId: string,
  options?: RuntailClientOptions,
): TrainingProgressWebSocket;

export declare function getWebSocketBaseUrl(): string;

export default TrainingProgressWebSocket;
