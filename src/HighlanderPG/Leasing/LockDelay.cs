namespace HighlanderPG.Leasing;

/// <summary>
/// The lock-delay after a server (re)start: a restart frees every lock at once, while holders cut off by it may still
/// run their children until their own deadlines. A new session takes no lock until the server has been up for the
/// lock-delay (<see cref="LeaseTimings.LockDelay"/>, the lease by default), counted from the postmaster's start or a later
/// reinitialisation, or from a crash-and-restart this node saw itself (whose postmaster start time does not move).
/// See docs/lease-protocol.md, "Lock-delay after a server restart".
/// </summary>
internal static class LockDelay
{
    /// <summary>
    /// How long from now the new session must wait before it tries any lock; zero or less: no wait.
    /// </summary>
    /// <param name="lockDelay">The configured lock-delay.</param>
    /// <param name="serverUptime">How long the server has been up (since its start or last reinitialisation), as it reported.</param>
    /// <param name="sinceCrashSeen">How long ago this node saw the server reinitialise after a backend crash, if it did.</param>
    public static TimeSpan Remaining(TimeSpan lockDelay, TimeSpan serverUptime, TimeSpan? sinceCrashSeen)
    {
        var remaining = lockDelay - serverUptime;
        if (sinceCrashSeen is { } since)
        {
            var sinceCrash = lockDelay - since;
            remaining = sinceCrash > remaining ? sinceCrash : remaining;
        }

        return remaining;
    }
}
