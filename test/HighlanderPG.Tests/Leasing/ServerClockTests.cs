using HighlanderPG.Leasing;
using Microsoft.Extensions.Time.Testing;

namespace HighlanderPG.Tests.Leasing;

/// <summary>The arithmetic of <see cref="ServerClock"/> (docs/lease-protocol.md, "Steps of the server's wall clock").</summary>
public sealed class ServerClockTests
{
    private static readonly DateTime ServerStart = new(2026, 12, 1, 12, 0, 0, DateTimeKind.Utc);
    private static readonly TimeSpan Tolerance = TimeSpan.FromMilliseconds(500);

    [Fact]
    public void Without_a_reading_there_is_no_bound_and_the_first_reading_reports_nothing()
    {
        var time = new FakeTimeProvider();
        var clock = new ServerClock(time, Tolerance);
        Assert.Null(clock.Bound(time.GetTimestamp()));
        Assert.Null(clock.Observe(ServerStart, time.GetTimestamp(), time.GetTimestamp()));
        Assert.True(clock.HasReading);
    }

    [Fact]
    public void The_bound_is_the_last_reading_plus_the_time_since_its_request_was_sent_plus_the_tolerance()
    {
        var time = new FakeTimeProvider();
        var clock = new ServerClock(time, Tolerance);
        var sent = time.GetTimestamp();
        time.Advance(TimeSpan.FromMilliseconds(40)); // the reading's round trip
        clock.Observe(ServerStart.AddMilliseconds(20), sent, time.GetTimestamp());

        time.Advance(TimeSpan.FromSeconds(2));
        Assert.Equal(ServerStart.AddMilliseconds(20) + TimeSpan.FromMilliseconds(2040) + Tolerance, clock.Bound(time.GetTimestamp()));
    }

    [Fact]
    public void A_reading_that_moved_with_this_nodes_clock_is_not_ahead_whatever_the_round_trips()
    {
        var time = new FakeTimeProvider();
        var clock = new ServerClock(time, Tolerance);
        var sent = time.GetTimestamp();
        time.Advance(TimeSpan.FromMilliseconds(5));
        clock.Observe(ServerStart, sent, time.GetTimestamp());

        // 3 s later, a slow round trip of 400 ms answered by a server whose clock read at its very end.
        time.Advance(TimeSpan.FromSeconds(3));
        sent = time.GetTimestamp();
        time.Advance(TimeSpan.FromMilliseconds(400));
        var ahead = clock.Observe(ServerStart.AddMilliseconds(3405), sent, time.GetTimestamp());
        Assert.NotNull(ahead);
        Assert.True(ahead <= TimeSpan.Zero, $"ahead {ahead}");
    }

    [Fact]
    public void A_forward_step_is_reported_by_at_least_its_size_less_the_round_trips_and_becomes_the_new_reference()
    {
        var time = new FakeTimeProvider();
        var clock = new ServerClock(time, Tolerance);
        var sent = time.GetTimestamp();
        time.Advance(TimeSpan.FromMilliseconds(2));
        clock.Observe(ServerStart, sent, time.GetTimestamp());

        time.Advance(TimeSpan.FromSeconds(1));
        sent = time.GetTimestamp();
        time.Advance(TimeSpan.FromMilliseconds(2));
        // The server's clock stepped 30 s forward meanwhile.
        var ahead = clock.Observe(ServerStart + TimeSpan.FromSeconds(31.001), sent, time.GetTimestamp());
        Assert.NotNull(ahead);
        Assert.InRange(ahead.Value, TimeSpan.FromSeconds(30) - TimeSpan.FromMilliseconds(4), TimeSpan.FromSeconds(30));

        // The next reading, with no further step, is not ahead: the stepped clock is the new reference.
        time.Advance(TimeSpan.FromSeconds(1));
        sent = time.GetTimestamp();
        time.Advance(TimeSpan.FromMilliseconds(2));
        Assert.True(clock.Observe(ServerStart + TimeSpan.FromSeconds(32.004), sent, time.GetTimestamp()) <= TimeSpan.Zero);
    }

    [Fact]
    public void A_backward_step_reads_behind_and_is_not_a_forward_step()
    {
        var time = new FakeTimeProvider();
        var clock = new ServerClock(time, Tolerance);
        var sent = time.GetTimestamp();
        clock.Observe(ServerStart, sent, sent);
        time.Advance(TimeSpan.FromSeconds(1));
        sent = time.GetTimestamp();
        var ahead = clock.Observe(ServerStart - TimeSpan.FromSeconds(40), sent, sent);
        Assert.True(ahead < TimeSpan.Zero);

        // Then stepped back to the right time (a forward step of 40 s): seen.
        time.Advance(TimeSpan.FromSeconds(1));
        sent = time.GetTimestamp();
        Assert.True(clock.Observe(ServerStart + TimeSpan.FromSeconds(2), sent, sent) > Tolerance);
    }

    [Fact]
    public void Ahead_compares_with_the_last_reading_without_recording_the_new_one()
    {
        var time = new FakeTimeProvider();
        var clock = new ServerClock(time, Tolerance);
        var sent = time.GetTimestamp();
        clock.Observe(ServerStart, sent, sent);
        time.Advance(TimeSpan.FromSeconds(1));

        // A stepped reading, asked twice: both times against the reading from before the step.
        Assert.Equal(TimeSpan.FromSeconds(30), clock.Ahead(ServerStart + TimeSpan.FromSeconds(31), time.GetTimestamp()));
        Assert.Equal(TimeSpan.FromSeconds(30), clock.Ahead(ServerStart + TimeSpan.FromSeconds(31), time.GetTimestamp()));
        Assert.Equal(ServerStart + TimeSpan.FromSeconds(1) + Tolerance, clock.Bound(time.GetTimestamp()));
    }

    [Fact]
    public void The_tolerance_is_half_the_safety_margin()
    {
        var timings = LeaseTimings.From(new HighlanderOptions { LeaseDuration = TimeSpan.FromSeconds(15), SafetyMargin = TimeSpan.FromSeconds(1) });
        Assert.Equal(TimeSpan.FromMilliseconds(500), timings.ClockStepTolerance);
    }
}
