using System.Diagnostics;
using HighlanderPG.Diagnostics;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Cli.Processes;

/// <summary>
/// The processes that left a command's (or member's) process group and outlived their parent: a daemon's double fork,
/// a <c>setsid</c> child of a shell that exited. <c>highlander run</c> is a child subreaper
/// (<see cref="Native.BecomeChildSubreaper"/>), so such a process is re-parented to <c>highlander</c>, not to PID 1:
/// whatever is a child of <c>highlander</c> without having been started by its launcher is one of them (with its own
/// descendants). They are stopped like the command, before the lock is released.
/// </summary>
internal static partial class Escapees
{
    private static readonly TimeSpan AfterKill = TimeSpan.FromMilliseconds(200);

    /// <summary>Whether this process is a child subreaper (set once, at start): without it, escaped processes cannot be found.</summary>
    public static bool Enabled { get; set; }

    /// <summary>
    /// Stops the escaped processes (those of <paramref name="member"/> only, by their <c>HIGHLANDER_MEMBER</c>, when given):
    /// SIGTERM to each, then SIGKILL to those left at <paramref name="killPoint"/>. Returns how many there were.
    /// </summary>
    public static Task<int> StopAsync(ProcessLauncher launcher, string owner, string? member, CancellationToken killPoint, ILogger logger)
    {
        // Not async up to here: nothing escaped (the usual case) costs no state machine, whose code would otherwise be
        // compiled for the first time on the way from SIGTERM to the lock's release.
        if (!Enabled)
        {
            return Task.FromResult(0);
        }

        var found = Find(launcher, member);
        return found.Count == 0 ? Task.FromResult(0) : StopFoundAsync(launcher, owner, member, found, killPoint, logger);
    }

    private static async Task<int> StopFoundAsync(ProcessLauncher launcher, string owner, string? member, IReadOnlyList<int> found, CancellationToken killPoint, ILogger logger)
    {
        LogStopping(logger, found.Count, owner, string.Join(", ", found));
        var all = new HashSet<int>(found);
        for (var round = 0; round < 10 && found.Count > 0; round++)
        {
            foreach (var pid in found)
            {
                Native.SignalProcess(pid, killPoint.IsCancellationRequested ? Native.SigKill : Native.SigTerm);
            }

            // Stopping a process may orphan its own children: they are re-parented here, and found on the next round.
            while (!killPoint.IsCancellationRequested && found.Any(Native.ProcessAlive))
            {
                await Task.Delay(20, CancellationToken.None).ConfigureAwait(false);
            }

            if (found.Any(Native.ProcessAlive))
            {
                var left = found.Where(Native.ProcessAlive).ToList();
                LogKilled(logger, owner, string.Join(", ", left));
                foreach (var pid in left)
                {
                    Native.SignalProcess(pid, Native.SigKill);
                }

                var until = Stopwatch.GetTimestamp() + (long)(AfterKill.TotalSeconds * Stopwatch.Frequency);
                while (left.Any(Native.ProcessAlive) && Stopwatch.GetTimestamp() < until)
                {
                    await Task.Delay(20, CancellationToken.None).ConfigureAwait(false);
                }
            }

            Native.ReapAdopted(pid => !launcher.Started(pid));
            found = [.. Find(launcher, member).Where(all.Add)];
        }

        Native.ReapAdopted(pid => !launcher.Started(pid));
        return all.Count;
    }

    /// <summary>
    /// Runs the search for escaped processes once, at start, and drops its result: the first search otherwise pays for
    /// compiling its code (the quick look at this process's children, and the scan of <c>/proc</c>), and it runs on the
    /// way from SIGTERM to the lock's release.
    /// </summary>
    public static void WarmUp(ProcessLauncher launcher)
    {
        if (Enabled)
        {
            _ = Find(launcher, null);
            _ = Native.ChildrenOf(Environment.ProcessId, _ => false); // the full scan, which Find skips when nothing escaped
            _ = Native.GroupExists(Environment.ProcessId);
        }

        // Called once, at a stop (the rehearsal leaves escaped processes alone): compiled now, not between the stop signal
        // and the release.
        HighlanderPG.Hosting.Precompile.Methods(typeof(Escapees), nameof(StopAsync));
    }

    /// <summary>Escalation: SIGKILL every escaped process now.</summary>
    public static void KillAll(ProcessLauncher launcher)
    {
        if (!Enabled)
        {
            return;
        }

        foreach (var pid in Find(launcher, null))
        {
            Native.SignalProcess(pid, Native.SigKill);
        }
    }

    private static IReadOnlyList<int> Find(ProcessLauncher launcher, string? member)
    {
        // The main thread's children first (one small read: whatever was re-parented here is among them): when the
        // launcher started every one of them (the usual case, often none), nothing escaped, and /proc as a whole need not
        // be read on the way from SIGTERM to the lock's release.
        if (Native.MainThreadChildren() is { } children && children.All(launcher.Started))
        {
            return [];
        }

        return Native.ChildrenOf(Environment.ProcessId, pid => !launcher.Started(pid) && (member is null || Native.EnvironmentOf(pid, "HIGHLANDER_MEMBER") == member));
    }

    [LoggerMessage(EventId = HighlanderEventIds.EscapedStopping, Level = LogLevel.Warning, Message = "{Count} processes of {Owner} left its process group (setsid, daemonizing) and were re-parented to highlander: stopping them (pids {Pids})")]
    private static partial void LogStopping(ILogger logger, int count, string owner, string pids);

    [LoggerMessage(EventId = HighlanderEventIds.EscapedKilled, Level = LogLevel.Warning, Message = "Processes of {Owner} that left its process group were still running at the kill point: SIGKILL (pids {Pids})")]
    private static partial void LogKilled(ILogger logger, string owner, string pids);
}
