/// One token bucket of a rate limiter, with Firecracker's semantics (its
/// `rate_limiter::TokenBucket`): `size` tokens, refilled at `size` per `refillTime`
/// milliseconds, plus a `oneTimeBurst` spent first and never refilled. It starts full.
///
/// Pure logic: every operation takes the time (monotonic nanoseconds) from the caller, so
/// tests drive it with a fake clock. Every value may come from a client (any `UInt64`):
/// the arithmetic is checked or full-width, and nothing traps.
package struct TokenBucket: Sendable, Equatable {
    /// The capacity (tokens), the one-time burst left, and the refill time.
    package let size: UInt64
    package private(set) var oneTimeBurst: UInt64
    package let refillTimeMilliseconds: UInt64
    /// The tokens there now (at most `size`), apart from the burst.
    package private(set) var budget: UInt64
    /// The refill time in nanoseconds (saturated at `UInt64.max`).
    private let refillNanoseconds: UInt64
    /// `size / refillNanoseconds` as a reduced fraction, so that the tokens for an elapsed
    /// time are exact: `elapsed * capacityPart / timePart`.
    private let capacityPart: UInt64
    private let timePart: UInt64
    /// When the budget was last brought up to date.
    private var lastUpdate: UInt64

    /// What `reduce` did.
    package enum Reduction: Equatable, Sendable {
        /// The tokens were taken.
        case success
        /// Not enough tokens: nothing was taken (beyond a burst spent on the way).
        case failure
        /// More than `size` tokens were asked for: the bucket was drained and the operation
        /// allowed; the limiter stays blocked for this many nanoseconds.
        case overConsumption(blockNanoseconds: UInt64)
    }

    /// A bucket, or nil when it limits nothing (`size` or `refillTime` 0, Firecracker's rule).
    package init?(size: UInt64, oneTimeBurst: UInt64 = 0, refillTimeMilliseconds: UInt64, now: UInt64) {
        guard size > 0, refillTimeMilliseconds > 0 else { return nil }
        self.size = size
        self.oneTimeBurst = oneTimeBurst
        self.refillTimeMilliseconds = refillTimeMilliseconds
        let (nanoseconds, overflow) = refillTimeMilliseconds.multipliedReportingOverflow(by: 1_000_000)
        refillNanoseconds = overflow ? UInt64.max : nanoseconds
        let common = Self.gcd(size, refillNanoseconds)
        capacityPart = size / common
        timePart = refillNanoseconds / common
        budget = size
        lastUpdate = now
    }

    static func gcd(_ a: UInt64, _ b: UInt64) -> UInt64 {
        var (a, b) = (a, b)
        while b != 0 { (a, b) = (b, a % b) }
        return a
    }

    /// `a * b / c` without overflow, when the result is known to fit (below 2^64).
    private static func scale(_ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
        let product = a.multipliedFullWidth(by: b)
        // The quotient fits exactly when the high half is below the divisor.
        guard product.high < c else { return UInt64.max }
        return c.dividingFullWidth(product).quotient
    }

    /// Adds the tokens earned since the last update (capped at `size`).
    package mutating func replenish(now: UInt64) {
        let elapsed = now >= lastUpdate ? now - lastUpdate : 0
        if elapsed >= refillNanoseconds {
            budget = size
            lastUpdate = now
            return
        }
        // elapsed < refillNanoseconds = timePart * common, so tokens < size: it fits.
        let tokens = Self.scale(elapsed, capacityPart, timePart)
        guard tokens > 0 else { return }
        // Only the time those whole tokens took is used up; the remainder carries over.
        lastUpdate &+= Self.scale(tokens, timePart, capacityPart)
        budget = budget > size - min(tokens, size) ? size : budget + tokens
    }

    /// Takes `tokens`: the one-time burst first, then the budget (replenished when short).
    package mutating func reduce(_ tokens: UInt64, now: UInt64) -> Reduction {
        var tokens = tokens
        if oneTimeBurst > 0 {
            if oneTimeBurst >= tokens {
                oneTimeBurst -= tokens
                lastUpdate = now
                return .success
            }
            tokens -= oneTimeBurst
            oneTimeBurst = 0
        }
        if tokens > budget {
            replenish(now: now)
            if tokens > size {
                // Over-consumption: allowed, the bucket drained, and the limiter blocked for
                // the time the deficit takes to refill.
                let deficit = tokens - budget
                budget = 0
                lastUpdate = now
                return .overConsumption(blockNanoseconds: Self.scale(deficit, refillNanoseconds, size))
            }
            if tokens > budget { return .failure }
        }
        budget -= tokens
        return .success
    }

    /// Gives back `tokens` (capped at `size`): a request charged to this bucket that another
    /// bucket then refused.
    package mutating func refund(_ tokens: UInt64) {
        budget = size - budget <= tokens ? size : budget + tokens
    }

    /// The nanoseconds until `tokens` (at most `size`) are there, from the last update.
    package func nanosecondsUntil(_ tokens: UInt64) -> UInt64 {
        guard tokens > budget else { return 0 }
        return Self.scale(min(tokens, size) - budget, refillNanoseconds, size)
    }
}

/// A rate limiter: a bandwidth bucket (bytes) and an operations bucket, each optional (nil
/// limits nothing), as Firecracker's `RateLimiter`. A refused request blocks the limiter
/// until `blockedUntil`: at most `retryNanoseconds` (100 ms) later, sooner when the buckets
/// will have the tokens by then. An over-consumption blocks it for the time its deficit
/// takes to refill. While blocked, every request is refused.
///
/// No heap storage: a device keeps one in its state and copies it freely.
package struct RateLimiter: Sendable, Equatable {
    /// Firecracker's `REFILL_TIMER_INTERVAL_MS`: how long a refused request waits at most.
    package static let retryNanoseconds: UInt64 = 100_000_000

    package private(set) var bandwidth: TokenBucket?
    package private(set) var ops: TokenBucket?
    /// While set and in the future, requests are refused (the device's timer is armed for it).
    package private(set) var blockedUntil: UInt64?

    package init(bandwidth: TokenBucket? = nil, ops: TokenBucket? = nil) {
        self.bandwidth = bandwidth
        self.ops = ops
    }

    /// Whether the limiter limits anything.
    package var isEnabled: Bool { bandwidth != nil || ops != nil }

    /// Replaces buckets (new ones start full): a `.some(nil)` disables that bucket, nil
    /// leaves it as it is. Clears a block, so the device retries at once.
    package mutating func update(bandwidth: TokenBucket?? = nil, ops: TokenBucket?? = nil) {
        if let bandwidth { self.bandwidth = bandwidth }
        if let ops { self.ops = ops }
        blockedUntil = nil
    }

    /// Whether a request of one operation and `bytes` bytes may go now; if so, its tokens
    /// are taken. If not, nothing is taken (the operation is refunded when the bandwidth
    /// bucket refuses) and `blockedUntil` says when to try again.
    package mutating func consume(bytes: UInt64, now: UInt64) -> Bool {
        if let until = blockedUntil {
            if now < until { return false }
            blockedUntil = nil
        }
        var blockFor: UInt64 = 0
        if ops != nil {
            switch ops!.reduce(1, now: now) {
            case .success: break
            case .overConsumption(let block): blockFor = block
            case .failure:
                block(now: now, needed: ops!.nanosecondsUntil(1))
                return false
            }
        }
        if bandwidth != nil {
            switch bandwidth!.reduce(bytes, now: now) {
            case .success: break
            case .overConsumption(let block): blockFor = max(blockFor, block)
            case .failure:
                ops?.refund(1)
                block(now: now, needed: bandwidth!.nanosecondsUntil(bytes))
                return false
            }
        }
        if blockFor > 0 {
            let (until, overflow) = now.addingReportingOverflow(blockFor)
            blockedUntil = overflow ? UInt64.max : until
        }
        return true
    }

    private mutating func block(now: UInt64, needed: UInt64) {
        let wait = max(1, min(needed, Self.retryNanoseconds))
        let (until, overflow) = now.addingReportingOverflow(wait)
        blockedUntil = overflow ? UInt64.max : until
    }
}
