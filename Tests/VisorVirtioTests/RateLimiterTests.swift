import Testing
import VisorVirtio

/// Token-bucket maths on a fake clock (nanoseconds).
@Suite struct TokenBucketTests {
    let ms: UInt64 = 1_000_000

    @Test func disabledBucketsAreNil() {
        #expect(TokenBucket(size: 0, refillTimeMilliseconds: 100, now: 0) == nil)
        #expect(TokenBucket(size: 10, refillTimeMilliseconds: 0, now: 0) == nil)
        #expect(TokenBucket(size: 0, oneTimeBurst: 5, refillTimeMilliseconds: 0, now: 0) == nil)
    }

    @Test func startsFullAndRefillsExactly() throws {
        var bucket = try #require(TokenBucket(size: 1000, refillTimeMilliseconds: 1000, now: 0))
        #expect(bucket.reduce(1000, now: 0) == .success)
        #expect(bucket.budget == 0)
        #expect(bucket.reduce(1, now: 0) == .failure)
        // 1 token per millisecond: 250 after 250 ms, none lost to rounding.
        #expect(bucket.reduce(250, now: 250 * ms) == .success)
        #expect(bucket.reduce(1, now: 250 * ms) == .failure)
        // 0.5 ms earns nothing, but is not lost: another 0.5 ms makes one token.
        #expect(bucket.reduce(1, now: 250 * ms + ms / 2) == .failure)
        #expect(bucket.reduce(1, now: 251 * ms) == .success)
        // A full refill time refills completely, and no more.
        #expect(bucket.reduce(1001, now: 10_000 * ms) != .failure)
    }

    @Test func capsAtSize() throws {
        var bucket = try #require(TokenBucket(size: 10, refillTimeMilliseconds: 10, now: 0))
        #expect(bucket.reduce(5, now: 0) == .success)
        bucket.replenish(now: 1_000 * ms)
        #expect(bucket.budget == 10)
    }

    @Test func oneTimeBurstIsSpentFirstAndNeverRefilled() throws {
        var bucket = try #require(TokenBucket(size: 10, oneTimeBurst: 100, refillTimeMilliseconds: 1000, now: 0))
        #expect(bucket.reduce(60, now: 0) == .success)
        #expect(bucket.oneTimeBurst == 40)
        #expect(bucket.budget == 10)
        // 40 from the burst, 5 from the budget.
        #expect(bucket.reduce(45, now: 0) == .success)
        #expect(bucket.oneTimeBurst == 0)
        #expect(bucket.budget == 5)
        bucket.replenish(now: 10_000 * ms)
        #expect(bucket.oneTimeBurst == 0)
        #expect(bucket.budget == 10)
    }

    @Test func overConsumptionDrainsAndBlocks() throws {
        var bucket = try #require(TokenBucket(size: 100, refillTimeMilliseconds: 1000, now: 0))
        // 250 tokens from a full bucket of 100: 150 over, 1.5 refill times.
        #expect(bucket.reduce(250, now: 0) == .overConsumption(blockNanoseconds: 1500 * ms))
        #expect(bucket.budget == 0)
    }

    @Test func refundIsCapped() throws {
        var bucket = try #require(TokenBucket(size: 10, refillTimeMilliseconds: 1000, now: 0))
        #expect(bucket.reduce(3, now: 0) == .success)
        bucket.refund(UInt64.max)
        #expect(bucket.budget == 10)
    }

    @Test func hugeValuesNeverTrap() throws {
        let max = UInt64.max
        var bucket = try #require(TokenBucket(size: max, oneTimeBurst: max, refillTimeMilliseconds: max, now: max - 5))
        #expect(bucket.reduce(max, now: max) == .success)
        #expect(bucket.reduce(max, now: max) == .success)
        #expect(bucket.reduce(max, now: 0) == .failure)  // a clock that went back earns nothing
        bucket.refund(max)
        #expect(bucket.budget == max)
        var small = try #require(TokenBucket(size: 1, refillTimeMilliseconds: max, now: 0))
        if case .overConsumption(let block) = small.reduce(max, now: max) {
            #expect(block == max)  // saturated
        } else {
            Issue.record("expected an over-consumption")
        }
        var fast = try #require(TokenBucket(size: max, refillTimeMilliseconds: 1, now: 0))
        #expect(fast.reduce(max, now: 0) == .success)
        #expect(fast.reduce(max / 2, now: ms / 2) == .success)  // elapsed * size overflows 64 bits
        #expect(fast.nanosecondsUntil(max) > 0)
    }
}

/// The limiter over both buckets: refunds, blocking and the retry time.
@Suite struct RateLimiterTests {
    let ms: UInt64 = 1_000_000

    @Test func disabledLimiterAllowsEverything() {
        var limiter = RateLimiter()
        #expect(!limiter.isEnabled)
        for _ in 0..<1000 { #expect(limiter.consume(bytes: UInt64.max, now: 0) == true) }
    }

    @Test func opsLimitBlocksAndRetriesWhenATokenIsDue() throws {
        var limiter = RateLimiter(ops: TokenBucket(size: 10, refillTimeMilliseconds: 100, now: 0))
        for _ in 0..<10 { #expect(limiter.consume(bytes: 0, now: 0) == true) }
        #expect(limiter.consume(bytes: 0, now: 0) == false)
        // One op every 10 ms: retried then, not after the full 100 ms.
        let until = try #require(limiter.blockedUntil)
        #expect(until == 10 * ms)
        #expect(limiter.consume(bytes: 0, now: 5 * ms) == false)
        #expect(limiter.consume(bytes: 0, now: 10 * ms) == true)
        #expect(limiter.blockedUntil == nil)
    }

    @Test func retryIsAtMost100Milliseconds() {
        var limiter = RateLimiter(bandwidth: TokenBucket(size: 1000, refillTimeMilliseconds: 10_000, now: 0))
        #expect(limiter.consume(bytes: 1000, now: 0) == true)
        #expect(limiter.consume(bytes: 500, now: 0) == false)
        #expect(limiter.blockedUntil == RateLimiter.retryNanoseconds)
    }

    @Test func bandwidthRefusalRefundsTheOperation() throws {
        var limiter = RateLimiter(
            bandwidth: TokenBucket(size: 100, refillTimeMilliseconds: 1000, now: 0),
            ops: TokenBucket(size: 5, refillTimeMilliseconds: 1000, now: 0))
        #expect(limiter.consume(bytes: 100, now: 0) == true)
        #expect(limiter.ops?.budget == 4)
        #expect(limiter.consume(bytes: 50, now: 0) == false)
        #expect(limiter.ops?.budget == 4)
    }

    @Test func overConsumptionIsAllowedThenBlocks() {
        var limiter = RateLimiter(bandwidth: TokenBucket(size: 100, refillTimeMilliseconds: 100, now: 0))
        #expect(limiter.consume(bytes: 300, now: 0) == true)
        #expect(limiter.blockedUntil == 200 * ms)
        #expect(limiter.consume(bytes: 1, now: 199 * ms) == false)
        #expect(limiter.consume(bytes: 1, now: 200 * ms) == true)
    }

    @Test func updateReplacesOnlyTheGivenBucketsAndUnblocks() {
        var limiter = RateLimiter(
            bandwidth: TokenBucket(size: 100, refillTimeMilliseconds: 1000, now: 0),
            ops: TokenBucket(size: 1, refillTimeMilliseconds: 1000, now: 0))
        #expect(limiter.consume(bytes: 10, now: 0) == true)
        #expect(limiter.consume(bytes: 10, now: 0) == false)
        // A new ops bucket starts full; the bandwidth bucket keeps its budget.
        limiter.update(ops: .some(TokenBucket(size: 2, refillTimeMilliseconds: 1000, now: 0)))
        #expect(limiter.blockedUntil == nil)
        #expect(limiter.bandwidth?.budget == 90)
        #expect(limiter.ops?.budget == 2)
        // A disabled bucket turns the limit off.
        limiter.update(bandwidth: .some(nil), ops: .some(nil))
        #expect(!limiter.isEnabled)
    }
}
