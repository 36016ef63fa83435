using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Benchmarks.Infrastructure;
using HighlanderPG.Benchmarks.Measurement;
using HighlanderPG.Benchmarks.Reporting;

namespace HighlanderPG.Benchmarks.Cases;

/// <summary>
/// <c>highlander run</c> hand-over: two <c>highlander run</c> processes (default options) with the same name and a
/// <c>sh</c> command that prints its first line at once, <c>sh -c 'echo started $$; exec sleep 1000'</c>; timed from
/// just before the leader's <c>highlander</c> gets SIGTERM (graceful) or SIGKILL to the follower's command printing
/// that line (read by the benchmark on the follower's standard output, which the command inherits). The floor is
/// that same command started directly: from just before the spawn to its first line, read the same way.
/// </summary>
internal static class CliCases
{
    public const string System = "highlander run";

    private const string Script = "echo started $$; exec sleep 1000";

    private static readonly HighlanderOptions Defaults = new();

    /// <summary>The <c>highlander</c> executable: given, or the repository's Release build.</summary>
    public static string? FindHighlander(BenchmarkSettings settings)
    {
        if (settings.Highlander is not null)
        {
            return Path.GetFullPath(settings.Highlander);
        }

        var root = RepositoryRootFinder.Find();
        var path = root is null ? null : Path.Combine(root, "src", "HighlanderPG.Cli", "bin", "Release", "net10.0", "highlander");
        return path is not null && File.Exists(path) ? path : null;
    }

    public static BenchCase Floor(BenchContext context)
    {
        var result = new CaseResult("cli-floor", "floor (command alone)", "start",
            $"The command alone, `sh -c '{Script}'`, spawned by the benchmark: timed from just before `Process.Start` to its first line on standard output. The least any `highlander run` hand-over can take after the new leader decides to start it.");
        return new BenchCase(result, context.Settings.Iterations, async (_, ct) =>
        {
            var started = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
            await using var command = WatchedProcess.Start("sh", ["-c", Script], null, (line, at) =>
            {
                if (line.StartsWith("started", StringComparison.Ordinal))
                {
                    started.TrySetResult(at);
                }
            });
            var at = await started.Task.WaitAsync(BenchContext.SetupTimeout, ct);
            return new Measured(Sample.Between(command.StartedAt, at));
        });
    }

    public static BenchCase HandOver(BenchContext context, bool graceful)
    {
        var id = graceful ? "cli-graceful" : "cli-crash";
        var result = new CaseResult(id, System, graceful ? "graceful" : "crash",
            (graceful
                ? "The leader's `highlander run` gets SIGTERM: it stops its command (SIGTERM to its process group), then releases the name. "
                : "The leader's `highlander run` is SIGKILLed (its command dies with it: parent-death signal). ") +
            $"Timed from just before the signal to the follower's command `sh -c '{Script}'` printing its first line.");
        var ns = $"bench-{context.RunId}-cli";
        string? highlander = null;
        return new BenchCase(result, context.Settings.Iterations, IterationAsync)
        {
            SetUp = _ =>
            {
                highlander = FindHighlander(context.Settings) ?? throw new FileNotFoundException(
                    "The highlander CLI was not found: build it (dotnet build HighlanderPG.slnx -c Release) or give --highlander PATH.");
                return Task.CompletedTask;
            },
        };

        async Task<Measured> IterationAsync(int i, CancellationToken ct)
        {
            var name = string.Create(CultureInfo.InvariantCulture, $"{id}-{i}");
            var (leader, leaderStarted) = Start(highlander!, context, ns, name, $"cli-lead-{i}");
            await using (leader)
            {
                await leaderStarted.WaitAsync(BenchContext.SetupTimeout, ct);
                var (follower, followerStarted) = Start(highlander!, context, ns, name, $"cli-follow-{i}");
                await using (follower)
                {
                    // The follower's wait session blocked on a lock: it is ready to take over.
                    await context.Probe.WaitForBlockedAsync("highlander-wait/" + NodeId(context, $"cli-follow-{i}"), BenchContext.SetupTimeout, ct);
                    // And settled: its take-over rehearsed and its next run started ahead (docs/cli.md), as a follower is
                    // from about a second after its start on. A hand-over before that is measured by no case here.
                    await WaitForStartedAheadAsync(follower.Pid, ct);
                    await Task.Delay(context.Dwell(Defaults.HeartbeatInterval), ct);

                    var start = Stopwatch.GetTimestamp();
                    if (graceful)
                    {
                        leader.Terminate();
                    }
                    else
                    {
                        leader.Kill();
                    }

                    Measured measured;
                    try
                    {
                        measured = new Measured(Sample.Between(start, await followerStarted.WaitAsync(context.Settings.Cap, ct)));
                    }
                    catch (TimeoutException)
                    {
                        measured = new Measured(Sample.Beyond(context.Settings.Cap));
                    }

                    await leader.WaitExitAsync(TimeSpan.FromSeconds(30));
                    var components = new List<(string, double)> { ("leader's `highlander` exited (seen by the benchmark)", Sample.ToMilliseconds(leader.ExitedAt - start)) };
                    follower.Terminate();
                    await follower.WaitExitAsync(TimeSpan.FromSeconds(30));
                    return measured with { Components = components };
                }
            }
        }
    }

    private static (WatchedProcess Process, Task<long> CommandStarted) Start(string highlander, BenchContext context, string ns, string name, string nodeId)
    {
        var started = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        var process = WatchedProcess.Start(
            highlander,
            ["run", "--name", name, "--namespace", ns, "--node-id", NodeId(context, nodeId), "--log-level", context.Settings.Verbose ? "information" : "warning", "--", "sh", "-c", Script],
            new Dictionary<string, string> { ["HIGHLANDER_CONNECTION"] = context.ConnectionString },
            (line, at) =>
            {
                if (line.StartsWith("started", StringComparison.Ordinal))
                {
                    started.TrySetResult(at);
                }
            });
        return (process, started.Task);
    }

    /// <summary>
    /// Until <paramref name="pid"/> (a following <c>highlander run</c>) has its next run started ahead: a child waiting on
    /// its FIFO (<c>read -r token</c>) to become the command, which it starts once its rehearsal is done. At most a few
    /// seconds (a build without it is measured as it is).
    /// </summary>
    private static async Task WaitForStartedAheadAsync(int pid, CancellationToken ct)
    {
        var until = Stopwatch.GetTimestamp() + 5 * Stopwatch.Frequency;
        while (Stopwatch.GetTimestamp() < until)
        {
            foreach (var child in ChildrenOf(pid))
            {
                try
                {
                    var cmdline = await File.ReadAllTextAsync($"/proc/{child}/cmdline", ct);
                    if (cmdline.Contains("read -r token", StringComparison.Ordinal) && cmdline.Contains(Script, StringComparison.Ordinal))
                    {
                        return;
                    }
                }
                catch (IOException)
                {
                    // gone meanwhile
                }
            }

            await Task.Delay(20, ct);
        }
    }

    /// <summary>The children of <paramref name="pid"/>, from each of its threads' <c>/proc/PID/task/TID/children</c>.</summary>
    private static List<int> ChildrenOf(int pid)
    {
        var children = new List<int>();
        try
        {
            foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
            {
                try
                {
                    foreach (var part in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                    {
                        children.Add(int.Parse(part, CultureInfo.InvariantCulture));
                    }
                }
                catch (IOException)
                {
                    // the thread ended meanwhile
                }
            }
        }
        catch (IOException)
        {
            // the process ended
        }

        return children;
    }

    private static string NodeId(BenchContext context, string nodeId) => $"{context.RunId[..4]}-{nodeId}";
}
