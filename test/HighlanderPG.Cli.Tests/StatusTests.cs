using System.Diagnostics;
using System.Text.Json;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Tests;

/// <summary><c>highlander status</c>.</summary>
[Collection(CliServer.Name)]
public sealed class StatusTests(PostgresFixture pg) : IDisposable
{
    private readonly JournalDirectory _life = new();
    private readonly string _name = "status-" + Guid.NewGuid().ToString("N")[..8];

    [Fact]
    public async Task Status_json_shows_the_holding_node_and_its_followers()
    {
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "st-a", .. RunTests.Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        await _life.Journal.WaitStartedAsync(_name, node: "st-a");
        await using var b = CliProcess.Start(["run", "--name", _name, "--node-id", "st-b", .. RunTests.Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        await b.WaitLoggedAsync(HighlanderEventIds.Following); // led by st-a, the only other node

        // A follower is visible while it waits on the lock, in bounded slices: ask until it shows (bounded).
        JsonElement entry = default;
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var (code, cli) = await CliProcess.RunAsync(["status", "--json", "--name", _name], JournalEnvironment.For(_life, pg.ConnectionString));
            Assert.True(code == 0, cli.Output);
            using var json = JsonDocument.Parse(cli.Stdout);
            entry = json.RootElement.EnumerateArray().Single(e => e.GetProperty("name").GetString() == _name).Clone();
            if (entry.GetProperty("followers").EnumerateArray().Any(f => f.GetProperty("node").GetString() == "st-b") || watch.Elapsed > TimeSpan.FromSeconds(15))
            {
                break;
            }

            await Task.Delay(200);
        }

        Assert.Equal("st-a", entry.GetProperty("leader").GetProperty("node").GetString());
        Assert.Equal("highlander/st-a", entry.GetProperty("leader").GetProperty("applicationName").GetString());
        Assert.True(entry.GetProperty("leader").GetProperty("backendPid").GetInt32() > 0);
        Assert.Equal(SingletonKey.Derive("highlander", _name), entry.GetProperty("key").GetInt64());
        Assert.Contains(entry.GetProperty("followers").EnumerateArray(), f => f.GetProperty("node").GetString() == "st-b");

        var (tableCode, table) = await CliProcess.RunAsync(["status", "--name", _name], JournalEnvironment.For(_life, pg.ConnectionString));
        Assert.True(tableCode == 0, table.Output);
        Assert.Contains(_name, table.Stdout);
        Assert.True(table.Stdout.Contains("st-a", StringComparison.Ordinal), table.Output);
    }

    [Fact]
    public async Task Status_of_an_unreachable_server_exits_4()
    {
        var (code, cli) = await CliProcess.RunAsync(["status", "--connection", "Host=127.0.0.1;Port=1;Password=hunter2-pw"]);
        Assert.True(code == ExitCodes.CannotConnect, cli.Output);
        Assert.True(cli.Stderr.Contains("cannot query 127.0.0.1:1", StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Output.Contains("hunter2-pw", StringComparison.Ordinal), cli.Output);
    }

    public void Dispose() => _life.Dispose();
}
