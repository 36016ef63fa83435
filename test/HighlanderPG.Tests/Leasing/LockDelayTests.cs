using HighlanderPG.Leasing;

namespace HighlanderPG.Tests.Leasing;

/// <summary>After a server (re)start, no lock is taken until holders cut off by it have had their lease.</summary>
public sealed class LockDelayTests
{
    private static readonly TimeSpan Delay = TimeSpan.FromSeconds(15);

    [Fact]
    public void A_server_up_longer_than_the_lock_delay_imposes_none()
    {
        Assert.True(LockDelay.Remaining(Delay, TimeSpan.FromMinutes(3), null) <= TimeSpan.Zero);
        Assert.Equal(TimeSpan.Zero, LockDelay.Remaining(Delay, Delay, null));
    }

    [Fact]
    public void A_freshly_started_server_imposes_the_rest_of_the_lock_delay()
    {
        Assert.Equal(TimeSpan.FromSeconds(11), LockDelay.Remaining(Delay, TimeSpan.FromSeconds(4), null));
    }

    [Fact]
    public void A_crash_this_node_saw_counts_from_when_it_saw_it_when_that_is_later()
    {
        // The postmaster's start time does not move on a crash-and-reinitialise: the crash seen 2 s ago rules.
        Assert.Equal(TimeSpan.FromSeconds(13), LockDelay.Remaining(Delay, TimeSpan.FromHours(1), TimeSpan.FromSeconds(2)));

        // A reinitialisation the server reports as later than the crash seen: the server's uptime rules.
        Assert.Equal(TimeSpan.FromSeconds(14), LockDelay.Remaining(Delay, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(10)));

        // A crash seen long ago imposes nothing more.
        Assert.True(LockDelay.Remaining(Delay, TimeSpan.FromHours(1), TimeSpan.FromMinutes(1)) <= TimeSpan.Zero);
    }
}
