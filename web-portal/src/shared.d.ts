export declare const LEDGER_PAGE_SIZE: number;
export declare const SLASHES_LIMIT: number;
export declare const HISTORY_DAYS: number;
export declare const LEADERBOARD_LIMIT: number;
export declare function formatPoints(points: number): string;
export declare function formatMultiplier(value: number): string;
export declare function formatDecimal(value: number, digits?: number): string;
