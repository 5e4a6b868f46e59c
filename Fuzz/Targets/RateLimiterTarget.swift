// The devices' token-bucket rate limiter, whose bucket values come from API clients (any
// 64-bit number) and whose clock may be anywhere in 64 bits.
import FuzzDeviceTargets
import VisorVirtio

/// A 64-bit value: small, 16-bit, near the top of the range, or any.
private func value(_ reader: inout ByteReader) -> UInt64 {
    switch reader.byte() % 4 {
    case 0: UInt64(reader.byte())
    case 1: UInt64(reader.uint16())
    case 2: UInt64.max - UInt64(reader.byte())
    default: reader.uint64()
    }
}

/// A bucket from the input (nil when its size or refill time is 0), full at `now`.
private func bucket(_ reader: inout ByteReader, now: UInt64) -> TokenBucket? {
    let size = value(&reader)
    let burst = reader.byte() & 1 == 0 ? 0 : value(&reader)
    let refill = reader.byte() & 1 == 0 ? UInt64(reader.byte()) : value(&reader)
    return TokenBucket(size: size, oneTimeBurst: burst, refillTimeMilliseconds: refill, now: now)
}

/// `a * b / c`, saturated at `UInt64.max`.
private func scaled(_ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
    let product = a.multipliedFullWidth(by: b)
    guard product.high < c else { return UInt64.max }
    return c.dividingFullWidth(product).quotient
}

/// The input is a start time, a bandwidth and an ops bucket (size, burst, refill time), then
/// steps: consume (a request of some bytes), advance the clock, or replace buckets.
///
/// Checks: no trap; a bucket's budget never exceeds its size; a blocked limiter refuses; a
/// refused request leaves the limiter blocked past now, for at most 100 ms when it was not
/// blocked before, and never lowers the ops budget (the op is refunded when the bandwidth
/// bucket refuses); and the requests admitted since the ops bucket was made never exceed
/// its size and burst plus what it refills in the time elapsed (with one refill quantum of
/// rounding slack per request).
func fuzzRateLimiter(_ data: [UInt8]) {
    var reader = ByteReader(data)
    var now = value(&reader)
    var limiter = RateLimiter(bandwidth: bucket(&reader, now: now), ops: bucket(&reader, now: now))
    // Since the ops bucket was made: when, its burst, and the requests it admitted.
    var since = now
    var burst = limiter.ops?.oneTimeBurst ?? 0
    var admitted: UInt64 = 0
    var requests: UInt64 = 0
    while !reader.isAtEnd {
        switch reader.byte() % 4 {
        case 0, 1:
            let bytes = value(&reader)
            let opsBefore = limiter.ops?.budget
            let blocked = limiter.blockedUntil.map { now < $0 } ?? false
            let allowed = limiter.consume(bytes: bytes, now: now)
            requests += 1
            if allowed {
                precondition(!blocked, "rate limiter: a blocked limiter allowed a request")
                admitted += 1
            } else {
                guard let until = limiter.blockedUntil else { preconditionFailure("rate limiter: refused, not blocked") }
                precondition(until > now || until == UInt64.max, "rate limiter: blocked until \(until), now \(now)")
                if !blocked {
                    precondition(
                        until - now <= RateLimiter.retryNanoseconds || until == UInt64.max,
                        "rate limiter: a refusal waits \(until - now) ns")
                }
                if let opsBefore, let after = limiter.ops?.budget {
                    precondition(after >= opsBefore, "rate limiter: a refused request kept its op")
                }
            }
        case 2:
            // Mostly milliseconds, sometimes any number of nanoseconds.
            let step = reader.byte() & 1 == 0 ? scaled(value(&reader), 1_000_000, 1) : value(&reader)
            let (later, overflow) = now.addingReportingOverflow(step)
            now = overflow ? UInt64.max : later
        default:
            let which = reader.byte()
            let bandwidth: TokenBucket?? = which & 1 == 0 ? nil : .some(bucket(&reader, now: now))
            let ops: TokenBucket?? = which & 2 == 0 ? nil : .some(bucket(&reader, now: now))
            limiter.update(bandwidth: bandwidth, ops: ops)
            precondition(limiter.blockedUntil == nil, "rate limiter: still blocked after an update")
            if ops != nil {
                since = now
                burst = limiter.ops?.oneTimeBurst ?? 0
                admitted = 0
                requests = 0
            }
        }
        for bucket in [limiter.bandwidth, limiter.ops].compactMap({ $0 }) {
            precondition(bucket.budget <= bucket.size, "rate limiter: budget \(bucket.budget) over size \(bucket.size)")
        }
        if let ops = limiter.ops {
            let refillNanoseconds = ops.refillTimeMilliseconds.multipliedReportingOverflow(by: 1_000_000)
            let refill = refillNanoseconds.overflow ? UInt64.max : refillNanoseconds.partialValue
            let earned = scaled(now >= since ? now - since : 0, ops.size, refill)
            let slack = scaled(ops.size / refill &+ 2, requests, 1)
            let allowance = [ops.size, burst, earned, slack].reduce(UInt64(0)) { sum, part in
                let (total, overflow) = sum.addingReportingOverflow(part)
                return overflow ? UInt64.max : total
            }
            precondition(admitted <= allowance, "rate limiter: \(admitted) requests admitted, \(allowance) allowed")
        }
    }
}
