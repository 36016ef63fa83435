using System.Text.Json;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Tests;

/// <summary><c>highlander status --watch</c>: the live view of the cluster in the terminal.</summary>
[Collection(CliServer.Name)]
public sealed class StatusWatchTests(PostgresFixture pg) : IDisposable
{
    private const int SigInt = 2;
    private readonly JournalDirectory _life = new();
    private readonly string _name = "watch-" + Guid.NewGuid().ToString("N")[..8];

    private static string LeaderLine(string name, string node) => $"\"name\":\"{name}\",\"leader\":{{\"node\":\"{node}\"";

    [Fact]
    public async Task Watch_json_prints_a_snapshot_per_change_shows_a_hand_over_and_ends_on_ctrl_c_with_0()
    {
        var env = JournalEnvironment.For(_life, pg.ConnectionString);
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "wt-a", .. RunTests.Timings, "--", .. _life.ScriptCommand], env);
        await _life.Journal.WaitStartedAsync(_name, node: "wt-a");
        await using var b = CliProcess.Start(["run", "--name", _name, "--node-id", "wt-b", .. RunTests.Timings, "--", .. _life.ScriptCommand], env);
        await b.WaitLoggedAsync(HighlanderEventIds.Following);

        await using var watch = CliProcess.Start(["status", "--watch", "--json", "--interval", "200ms", "--name", _name], env);
        await watch.WaitForStdoutAsync(LeaderLine(_name, "wt-a"), TimeSpan.FromSeconds(60));

        // Both nodes are seen, from the database alone.
        await watch.WaitForStdoutAsync("{\"node\":\"wt-b\",\"lockSessions\":[{", TimeSpan.FromSeconds(60));

        // The leader steps down (SIGTERM); the follower takes over; the watch prints it, with the hand-over.
        a.Signal(HighlanderPG.Cli.Processes.Native.SigTerm);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        await watch.WaitForStdoutAsync(LeaderLine(_name, "wt-b"), TimeSpan.FromSeconds(60));

        watch.Signal(SigInt);
        Assert.True(await watch.WaitForExitAsync(TimeSpan.FromSeconds(30)) == 0, watch.Output);

        // One JSON object per line; consecutive lines differ (a line per change); the hand-overs seen add up to wt-a -> wt-b.
        var lines = watch.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var documents = lines.Select(l => JsonDocument.Parse(l)).ToList();
        try
        {
            Assert.True(lines.Length >= 2, watch.Output);
            var handOvers = documents.SelectMany(d => d.RootElement.GetProperty("handOvers").EnumerateArray())
                .Where(h => h.GetProperty("name").GetString() == _name).ToList();
            Assert.True(handOvers.Any(h => h.GetProperty("from").GetString() == "wt-a"), watch.Output);
            Assert.True(handOvers.Any(h => h.GetProperty("to").GetString() == "wt-b"), watch.Output);
            var leaders = documents.Select(d => d.RootElement.GetProperty("singletons").EnumerateArray()
                .Where(s => s.GetProperty("name").GetString() == _name)
                .Select(s => s.GetProperty("leader") is { ValueKind: JsonValueKind.Object } l ? l.GetProperty("node").GetString() : null)
                .SingleOrDefault()).ToList();
            var firstB = leaders.IndexOf("wt-b");
            Assert.True(leaders.IndexOf("wt-a") < firstB && !leaders.Skip(firstB).Contains("wt-a"), string.Join(",", leaders));
            Assert.DoesNotContain(lines.Zip(lines.Skip(1)), pair => pair.First[pair.First.IndexOf(",\"namespace\"", StringComparison.Ordinal)..] == pair.Second[pair.Second.IndexOf(",\"namespace\"", StringComparison.Ordinal)..]);
        }
        finally
        {
            documents.ForEach(d => d.Dispose());
        }
    }

    [Fact]
    public async Task Watch_without_a_terminal_prints_a_table_per_change_and_ends_on_sigterm_with_0()
    {
        var env = JournalEnvironment.For(_life, pg.ConnectionString);
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "wp-a", .. RunTests.Timings, "--", .. _life.ScriptCommand], env);
        await _life.Journal.WaitStartedAsync(_name, node: "wp-a");
        await using var watch = CliProcess.Start(["status", "--watch", "--name", _name], env);
        await watch.WaitForStdoutAsync("NAME", TimeSpan.FromSeconds(60));
        await watch.WaitForStdoutAsync("wp-a", TimeSpan.FromSeconds(60));
        watch.Signal(HighlanderPG.Cli.Processes.Native.SigTerm);
        Assert.True(await watch.WaitForExitAsync(TimeSpan.FromSeconds(30)) == 0, watch.Output);
        Assert.Contains(watch.Stdout.Split('\n'), l => l.StartsWith(_name, StringComparison.Ordinal) && l.Contains("wp-a", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Interval_without_watch_or_too_short_is_a_usage_error()
    {
        var (code, cli) = await CliProcess.RunAsync(["status", "--interval", "1s"], JournalEnvironment.For(_life, pg.ConnectionString));
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.Contains("--interval goes with --watch", cli.Stderr, StringComparison.Ordinal);
        (code, cli) = await CliProcess.RunAsync(["status", "--watch", "--interval", "10ms"], JournalEnvironment.For(_life, pg.ConnectionString));
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.Contains("at least 100ms", cli.Stderr, StringComparison.Ordinal);
    }

    public void Dispose() => _life.Dispose();
}
