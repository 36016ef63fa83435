using HighlanderPG.Hosting;
using HighlanderPG.Leasing;
using Microsoft.Extensions.Time.Testing;

namespace HighlanderPG.Tests.Leasing;

/// <summary>The lease's arithmetic, computed once: the inequality at its boundary and every derived value.</summary>
public sealed class LeaseTimingsTests
{
    private static HighlanderOptions Options(double lease, double heartbeat, double stop, double margin) => new()
    {
        LeaseDuration = TimeSpan.FromSeconds(lease),
        HeartbeatInterval = TimeSpan.FromSeconds(heartbeat),
        StopTimeout = TimeSpan.FromSeconds(stop),
        SafetyMargin = TimeSpan.FromSeconds(margin),
    };

    [Fact]
    public void The_inequality_holds_at_its_boundary_and_fails_one_millisecond_past_it()
    {
        // 2 × 2 s + 5 s + 1 s = 10 s = the lease: fits exactly.
        var exact = Options(10, 2, 5, 1);
        Assert.Empty(LeaseTimings.Check(exact));

        var over = Options(10, 2, 5, 1);
        over.StopTimeout += TimeSpan.FromMilliseconds(1);
        var problem = Assert.Single(LeaseTimings.Check(over));
        Assert.StartsWith("The lease does not fit", problem.Message, StringComparison.Ordinal);
        Assert.Equal(
            [nameof(HighlanderOptions.HeartbeatInterval), nameof(HighlanderOptions.StopTimeout), nameof(HighlanderOptions.SafetyMargin), nameof(HighlanderOptions.LeaseDuration)],
            problem.Options);
    }

    [Fact]
    public void The_defaults_derive_every_bound()
    {
        var timings = LeaseTimings.From(new HighlanderOptions());
        Assert.Equal(TimeSpan.FromSeconds(15), timings.Lease);
        Assert.Equal(TimeSpan.FromSeconds(2), timings.Heartbeat);
        Assert.Equal(TimeSpan.FromSeconds(5), timings.StopTimeout);
        Assert.Equal(TimeSpan.FromSeconds(1), timings.SafetyMargin);
        Assert.Equal(TimeSpan.FromSeconds(5), timings.WaitSlice);
        Assert.Equal(TimeSpan.FromSeconds(15), timings.LockDelay);
        Assert.Equal(TimeSpan.FromSeconds(14), timings.DeadlineAfterAck);
        Assert.Equal(TimeSpan.FromSeconds(9), timings.StopPointAfterAck);
        Assert.Equal(15, timings.CommandTimeoutSeconds);
        Assert.Equal(15_000, timings.IdleSessionTimeoutMilliseconds);
        Assert.Equal(5, timings.KeepalivesIdleSeconds);
        Assert.Equal(11, timings.KeepalivesCount);
        Assert.Equal(TimeSpan.FromMilliseconds(4750), timings.ChildKillAfter);
    }

    [Fact]
    public void A_short_lease_gets_a_wait_slice_of_a_third_of_it_and_validates_without_setting_one()
    {
        var options = Options(3, 0.5, 1, 0.5);
        options.ConnectionString = "Host=127.0.0.1";
        Assert.Null(options.WaitSlice);
        Assert.Empty(HighlanderOptionsValidator.Check(options, []));

        var timings = LeaseTimings.From(options);
        Assert.Equal(TimeSpan.FromSeconds(1), timings.WaitSlice);
        Assert.Equal(TimeSpan.FromSeconds(2.5), timings.DeadlineAfterAck);
        Assert.Equal(TimeSpan.FromSeconds(1.5), timings.StopPointAfterAck);
        Assert.Equal(3, timings.CommandTimeoutSeconds);
        Assert.Equal(TimeSpan.FromMilliseconds(750), timings.ChildKillAfter); // 1 s less 250 ms

        // The wait slice alone never blocks a short lease any more (the other defaults may).
        Assert.DoesNotContain(LeaseTimings.Check(new HighlanderOptions { LeaseDuration = TimeSpan.FromSeconds(3) }), p => p.Options.Contains(nameof(HighlanderOptions.WaitSlice)));
    }

    [Fact]
    public void An_explicit_wait_slice_and_lock_delay_are_kept_and_still_validated()
    {
        var options = new HighlanderOptions { WaitSlice = TimeSpan.FromSeconds(7), LockDelayAfterServerStart = TimeSpan.FromSeconds(20) };
        var timings = LeaseTimings.From(options);
        Assert.Equal(TimeSpan.FromSeconds(7), timings.WaitSlice);
        Assert.Equal(TimeSpan.FromSeconds(20), timings.LockDelay);

        Assert.Contains(LeaseTimings.Check(new HighlanderOptions { WaitSlice = TimeSpan.FromSeconds(15) }), p => p.Options.Contains(nameof(HighlanderOptions.WaitSlice)));
        Assert.Contains(LeaseTimings.Check(new HighlanderOptions { WaitSlice = TimeSpan.Zero }), p => p.Options.Contains(nameof(HighlanderOptions.WaitSlice)));
    }

    [Fact]
    public void A_short_stop_timeout_is_killed_at_three_quarters_of_it()
    {
        var timings = LeaseTimings.From(new HighlanderOptions { StopTimeout = TimeSpan.FromMilliseconds(400) });
        Assert.Equal(TimeSpan.FromMilliseconds(300), timings.ChildKillAfter);
    }

    [Fact]
    public void Timestamp_deltas_and_time_left_follow_the_time_provider()
    {
        var time = new FakeTimeProvider();
        var start = time.GetTimestamp();
        var at = start + LeaseTimings.ToTimestampDelta(TimeSpan.FromSeconds(5), time);
        Assert.Equal(TimeSpan.FromSeconds(5), time.GetElapsedTime(start, at));
        Assert.Equal(TimeSpan.FromSeconds(5), LeaseTimings.Until(at, time));

        time.Advance(TimeSpan.FromSeconds(4));
        Assert.Equal(TimeSpan.FromSeconds(1), LeaseTimings.Until(at, time));
        time.Advance(TimeSpan.FromSeconds(2));
        Assert.Equal(TimeSpan.Zero, LeaseTimings.Until(at, time)); // passed: zero, never negative
        Assert.Equal(TimeSpan.Zero, LeaseTimings.Until(long.MinValue, time)); // unknown: assume it is gone now
    }
}
