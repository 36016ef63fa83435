using System.Text.Json;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Tests;

/// <summary><c>highlander status</c> and <c>status --watch</c> show the hold-offs running: drained nodes, held-off singletons.</summary>
[Collection(CliServer.Name)]
public sealed class StatusHoldOffTests(PostgresFixture pg) : IDisposable
{
    private const int SigInt = 2;
    private readonly JournalDirectory _life = new();
    private readonly string _name = "holdoff-" + Guid.NewGuid().ToString("N")[..8];
    private readonly string _a = "ho-a-" + Guid.NewGuid().ToString("N")[..6];
    private readonly string _b = "ho-b-" + Guid.NewGuid().ToString("N")[..6];

    [Fact]
    public async Task Status_shows_a_step_down_hold_off_and_a_drain_until_undrain_ends_them()
    {
        var env = JournalEnvironment.For(_life, pg.ConnectionString);
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", _a, .. RunTests.Timings, "--", .. _life.ScriptCommand], env);
        await _life.Journal.WaitStartedAsync(_name, node: _a);
        await using var b = CliProcess.Start(["run", "--name", _name, "--node-id", _b, .. RunTests.Timings, "--", .. _life.ScriptCommand], env);
        await b.WaitLoggedAsync(HighlanderEventIds.Following);

        // Nothing held off yet: no hold-off lines.
        var (code, cli) = await CliProcess.RunAsync(["status", "--name", _name], env);
        Assert.True(code == 0, cli.Output);
        Assert.DoesNotContain($" on {_a} until", cli.Stdout);
        Assert.DoesNotContain($"Drained: {_b}", cli.Stdout);

        // A step-down holds a off the singleton (by name): a line, and in JSON the singleton's heldOff.
        (code, cli) = await CliProcess.RunAsync(["stepdown", _name, "--hold-off", "5m", "--timeout", "60s"], env);
        Assert.True(code == 0, cli.Output);
        (code, cli) = await CliProcess.RunAsync(["status", "--name", _name], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains($"Held off: {_name} on {_a} until ", cli.Stdout);
        Assert.DoesNotContain($"Drained: {_a}", cli.Stdout);
        Assert.Contains(cli.Stdout.Split('\n'), l => l.StartsWith(_name, StringComparison.Ordinal) && l.Contains(_b, StringComparison.Ordinal)); // the table is still there, first
        Assert.True(cli.Stdout.IndexOf($"Held off: {_name}", StringComparison.Ordinal) > cli.Stdout.IndexOf(_b, StringComparison.Ordinal), cli.Output);

        var heldOff = await HeldOffAsync(env);
        var stepDown = Assert.Single(heldOff, h => h.GetProperty("node").GetString() == _a);
        Assert.Equal("stepdown", stepDown.GetProperty("kind").GetString());
        Assert.Equal(_name, stepDown.GetProperty("name").GetString());
        Assert.Equal(SingletonKey.Derive("highlander", _name), stepDown.GetProperty("key").GetInt64());
        Assert.True(stepDown.GetProperty("until").GetDateTimeOffset() > stepDown.GetProperty("requestedAt").GetDateTimeOffset());
        Assert.False(string.IsNullOrEmpty(stepDown.GetProperty("requestedBy").GetString()));

        // undrain ends it: gone from status.
        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _a], env);
        Assert.True(code == 0, cli.Output);
        (code, cli) = await CliProcess.RunAsync(["status", "--name", _name], env);
        Assert.True(code == 0, cli.Output);
        Assert.DoesNotContain($" on {_a} until", cli.Stdout);
        Assert.DoesNotContain(await HeldOffAsync(env), h => h.GetProperty("node").GetString() == _a);

        // A drain: the node shows as drained, with who asked, until undrain.
        (code, cli) = await CliProcess.RunAsync(["drain", "--node", _b, "--hold-off", "10m"], env);
        Assert.True(code == 0, cli.Output);
        (code, cli) = await CliProcess.RunAsync(["status", "--name", _name], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains(cli.Stdout.Split('\n'), l => l.StartsWith($"Drained: {_b} until ", StringComparison.Ordinal) && l.Contains("(by ", StringComparison.Ordinal));
        var drain = Assert.Single(await HeldOffAsync(env), h => h.GetProperty("node").GetString() == _b);
        Assert.Equal("drain", drain.GetProperty("kind").GetString());
        Assert.Equal(JsonValueKind.Null, drain.GetProperty("key").ValueKind);

        // Another fencing schema has no control objects: status shows no hold-offs and does not fail.
        (code, cli) = await CliProcess.RunAsync(["status", "--name", _name, "--fencing-schema", "no_control_here"], env);
        Assert.True(code == 0, cli.Output);
        Assert.DoesNotContain("Drained:", cli.Stdout);
        Assert.DoesNotContain("Held off:", cli.Stdout);

        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _b], env);
        Assert.True(code == 0, cli.Output);
        (code, cli) = await CliProcess.RunAsync(["status", "--name", _name], env);
        Assert.True(code == 0, cli.Output);
        Assert.DoesNotContain($"Drained: {_b}", cli.Stdout);
        Assert.DoesNotContain(await HeldOffAsync(env), h => h.GetProperty("node").GetString() == _b);
    }

    [Fact]
    public async Task Watch_shows_a_drain_and_drops_it_after_undrain()
    {
        var env = JournalEnvironment.For(_life, pg.ConnectionString);
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", _a, .. RunTests.Timings, "--", .. _life.ScriptCommand], env);
        await _life.Journal.WaitStartedAsync(_name, node: _a);
        await using var json = CliProcess.Start(["status", "--watch", "--json", "--interval", "200ms", "--name", _name], env);
        await using var plain = CliProcess.Start(["status", "--watch", "--interval", "200ms", "--name", _name], env);
        await json.WaitForStdoutAsync($"\"name\":\"{_name}\",\"leader\":{{\"node\":\"{_a}\"", TimeSpan.FromSeconds(60));
        await plain.WaitForStdoutAsync(_a, TimeSpan.FromSeconds(60));

        var mark = _life.Journal.Mark();
        var (code, cli) = await CliProcess.RunAsync(["drain", "--node", _a, "--hold-off", "10m"], env);
        Assert.True(code == 0, cli.Output);
        await json.WaitForStdoutAsync($"{{\"node\":\"{_a}\",\"kind\":\"drain\",\"key\":null,\"name\":null,", TimeSpan.FromSeconds(60));
        await plain.WaitForStdoutAsync($"Drained: {_a} until ", TimeSpan.FromSeconds(60));
        await _life.Journal.WaitStoppedAsync(_name, _a, mark);
        await json.WaitForStdoutAsync($"\"from\":\"{_a}\",\"to\":null", TimeSpan.FromSeconds(60)); // the watch saw nobody lead it

        // After undrain a leads again; the line that shows it taking over shows no hold-off of a's.
        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _a], env);
        Assert.True(code == 0, cli.Output);
        var back = $"\"from\":null,\"to\":\"{_a}\"";
        await json.WaitForStdoutAsync(back, TimeSpan.FromSeconds(60));

        json.Signal(SigInt);
        Assert.True(await json.WaitForExitAsync(TimeSpan.FromSeconds(30)) == 0, json.Output);
        plain.Signal(SigInt);
        Assert.True(await plain.WaitForExitAsync(TimeSpan.FromSeconds(30)) == 0, plain.Output);

        var line = json.Stdout.Split('\n').First(l => l.Contains(back, StringComparison.Ordinal));
        using var document = JsonDocument.Parse(line);
        Assert.DoesNotContain(document.RootElement.GetProperty("holdOffs").EnumerateArray(), h => h.GetProperty("node").GetString() == _a);

        // The plain view printed the drain after its node table.
        var block = plain.Stdout.Split("-- ").First(b => b.Contains($"Drained: {_a} until ", StringComparison.Ordinal));
        Assert.True(block.IndexOf("NODE", StringComparison.Ordinal) < block.IndexOf("Drained:", StringComparison.Ordinal), plain.Output);
    }

    /// <summary>The heldOff array of <see cref="_name"/> in <c>status --json</c>.</summary>
    private async Task<List<JsonElement>> HeldOffAsync(IReadOnlyDictionary<string, string> env)
    {
        var (code, cli) = await CliProcess.RunAsync(["status", "--json", "--name", _name], env);
        Assert.True(code == 0, cli.Output);
        using var json = JsonDocument.Parse(cli.Stdout);
        var entry = json.RootElement.EnumerateArray().Single(e => e.GetProperty("name").GetString() == _name);
        return entry.GetProperty("heldOff").EnumerateArray().Select(h => h.Clone()).ToList();
    }

    public void Dispose() => _life.Dispose();
}
