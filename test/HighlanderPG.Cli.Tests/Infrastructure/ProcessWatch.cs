using System.Diagnostics;

namespace HighlanderPG.Cli.Tests.Infrastructure;

/// <summary>Waits on process state from outside (there is no event for another process's exit).</summary>
public static class ProcessWatch
{
    public static async Task AssertGoneAsync(int pid, string what, TimeSpan? timeout = null)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(5);
        var watch = Stopwatch.StartNew();
        while (HighlanderPG.Cli.Processes.Native.ProcessAlive(pid))
        {
            Assert.True(watch.Elapsed < limit, $"{what} (pid {pid}) is still alive after {limit}");
            await Task.Delay(25);
        }
    }
}
