using System.Diagnostics;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;

namespace HighlanderPG.Cli.Tests;

/// <summary>The watchdog that SIGKILLs a dead highlander's process groups, run on its own.</summary>
public sealed class WatchdogTests
{
    [Fact]
    public async Task At_end_of_input_the_watchdog_kills_its_groups_but_never_a_group_id_now_owned_by_another_process()
    {
        using var ours = StartGroupLeader();
        using var reused = StartGroupLeader(); // stands for a process that got the id of a group the watchdog once had
        try
        {
            var watchdog = new Process { StartInfo = new ProcessStartInfo("setsid", ["--", "sh", "-c", ProcessLauncher.WatchdogScript]) { RedirectStandardInput = true } };
            watchdog.Start();
            await watchdog.StandardInput.WriteAsync($"+{ours.Id}:{Native.StartTime(ours.Id)}\n+{reused.Id}:{Native.StartTime(reused.Id) - 1}\n+{int.MaxValue - 1}:1\n");
            watchdog.StandardInput.Close(); // what highlander's death looks like to it
            await watchdog.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));

            await ProcessWatch.AssertGoneAsync(ours.Id, "the registered group's leader");
            Assert.True(Native.ProcessAlive(reused.Id), "a process whose pid matches a registered group but started later must be spared");
        }
        finally
        {
            KillQuietly(ours);
            KillQuietly(reused);
        }
    }

    [Fact]
    public async Task A_group_the_watchdog_was_told_to_forget_is_not_killed()
    {
        using var leader = StartGroupLeader();
        try
        {
            var watchdog = new Process { StartInfo = new ProcessStartInfo("setsid", ["--", "sh", "-c", ProcessLauncher.WatchdogScript]) { RedirectStandardInput = true } };
            watchdog.Start();
            await watchdog.StandardInput.WriteAsync($"+{leader.Id}:{Native.StartTime(leader.Id)}\n-{leader.Id}\n");
            watchdog.StandardInput.Close();
            await watchdog.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            Assert.True(Native.ProcessAlive(leader.Id));
        }
        finally
        {
            KillQuietly(leader);
        }
    }

    [Fact]
    public async Task A_registered_process_that_does_not_lead_a_group_yet_is_killed_itself()
    {
        // What highlander's death leaves in the instant after a start: the process is still setpriv or setsid, in
        // highlander's group (here: the test's), and no group has its pid as id yet.
        using var starting = Process.Start(new ProcessStartInfo("sleep", ["60"]))!;
        try
        {
            Assert.False(Native.GroupExists(starting.Id));
            var watchdog = new Process { StartInfo = new ProcessStartInfo("setsid", ["--", "sh", "-c", ProcessLauncher.WatchdogScript]) { RedirectStandardInput = true } };
            watchdog.Start();
            await watchdog.StandardInput.WriteAsync($"+{starting.Id}:{Native.StartTime(starting.Id)}\n");
            watchdog.StandardInput.Close();
            await watchdog.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));

            await ProcessWatch.AssertGoneAsync(starting.Id, "the registered process without a group of its own");
        }
        finally
        {
            KillQuietly(starting);
        }
    }

    /// <summary>A sleeping process that leads its own session and group (its pid is its group id).</summary>
    private static Process StartGroupLeader() => Process.Start(new ProcessStartInfo("setsid", ["--", "sleep", "60"]))!;

    private static void KillQuietly(Process process)
    {
        try
        {
            process.Kill();
        }
        catch (InvalidOperationException)
        {
        }
    }
}
