using HighlanderPG.Leasing;
using Microsoft.Extensions.Time.Testing;

namespace HighlanderPG.Tests.Leasing;

public sealed class LeaseClockTests
{
    private static readonly LeaseTimings Timings = LeaseTimings.From(new HighlanderOptions
    {
        LeaseDuration = TimeSpan.FromSeconds(10),
        SafetyMargin = TimeSpan.FromSeconds(1),
        StopTimeout = TimeSpan.FromSeconds(3),
    });

    [Fact]
    public void Without_any_acknowledgement_children_must_stop()
    {
        var clock = new LeaseClock(new FakeTimeProvider(), Timings);
        Assert.False(clock.HasAck);
        Assert.True(clock.MustStop);
    }

    [Fact]
    public void Stop_point_is_send_time_plus_lease_minus_margin_minus_stop_timeout()
    {
        var time = new FakeTimeProvider();
        var clock = new LeaseClock(time, Timings);
        var sent = time.GetTimestamp();
        time.Advance(TimeSpan.FromMilliseconds(700)); // the answer comes later; the send time counts
        clock.Acknowledge(sent);

        Assert.Equal(TimeSpan.FromSeconds(9) - TimeSpan.FromMilliseconds(700), clock.UntilDeadline);
        Assert.Equal(TimeSpan.FromSeconds(6) - TimeSpan.FromMilliseconds(700), clock.UntilStop);

        time.Advance(TimeSpan.FromSeconds(6) - TimeSpan.FromMilliseconds(701));
        Assert.False(clock.MustStop);
        time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.True(clock.MustStop);
    }

    [Fact]
    public void A_late_acknowledgement_of_an_older_request_never_moves_the_deadline_back()
    {
        var time = new FakeTimeProvider();
        var clock = new LeaseClock(time, Timings);
        var first = time.GetTimestamp();
        time.Advance(TimeSpan.FromSeconds(2));
        var second = time.GetTimestamp();
        clock.Acknowledge(second);
        var deadline = clock.DeadlineTimestamp;
        clock.Acknowledge(first);
        Assert.Equal(deadline, clock.DeadlineTimestamp);
    }

    [Fact]
    public void Each_acknowledged_heartbeat_extends_the_deadline_and_reset_forgets_them()
    {
        var time = new FakeTimeProvider();
        var clock = new LeaseClock(time, Timings);
        for (var i = 0; i < 10; i++)
        {
            clock.Acknowledge(time.GetTimestamp());
            time.Advance(TimeSpan.FromSeconds(2));
            Assert.False(clock.MustStop);
        }

        clock.Reset();
        Assert.True(clock.MustStop);
    }

    [Fact]
    public void A_lease_lost_by_the_deadline_escalates_at_the_deadline_and_the_server_may_free_it_a_margin_later()
    {
        var time = new FakeTimeProvider();
        var clock = new LeaseClock(time, Timings);
        var sent = time.GetTimestamp();
        clock.Acknowledge(sent);
        time.Advance(TimeSpan.FromSeconds(7)); // past the stop point (6 s), before the deadline (9 s)

        Assert.Equal(TimeSpan.FromSeconds(2), time.GetElapsedTime(time.GetTimestamp(), clock.EscalationTimestamp(byDeadline: true)));
        Assert.Equal(TimeSpan.FromSeconds(3), time.GetElapsedTime(time.GetTimestamp(), clock.ServerMayFreeAfterLoss(byDeadline: true)));
    }

    [Fact]
    public void A_lease_lost_with_its_session_escalates_after_the_stop_timeout_never_past_the_deadline_and_may_be_gone_now()
    {
        var time = new FakeTimeProvider();
        var clock = new LeaseClock(time, Timings);
        clock.Acknowledge(time.GetTimestamp());
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(TimeSpan.FromSeconds(3), time.GetElapsedTime(time.GetTimestamp(), clock.EscalationTimestamp(byDeadline: false))); // the stop timeout
        Assert.Equal(long.MinValue, clock.ServerMayFreeAfterLoss(byDeadline: false));

        time.Advance(TimeSpan.FromSeconds(7)); // 1 s before the deadline: the deadline comes first
        Assert.Equal(TimeSpan.FromSeconds(1), time.GetElapsedTime(time.GetTimestamp(), clock.EscalationTimestamp(byDeadline: false)));

        clock.Reset(); // no acknowledgement at all: the stop timeout from now
        Assert.Equal(TimeSpan.FromSeconds(3), time.GetElapsedTime(time.GetTimestamp(), clock.EscalationTimestamp(byDeadline: false)));
    }
}
