using System.Diagnostics;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Tests;

/// <summary><c>highlander run --once</c>: cron mode.</summary>
[Collection(CliServer.Name)]
public sealed class OnceTests(PostgresFixture pg) : IDisposable
{
    private readonly JournalDirectory _life = new();
    private readonly string _name = "cron-" + Guid.NewGuid().ToString("N")[..8];

    [Fact]
    public async Task Once_with_a_free_name_runs_the_command_and_exits_with_its_code()
    {
        var (code, cli) = await CliProcess.RunAsync(
            ["run", "--once", "--name", _name, "--node-id", "cron1", "--", "sh", "-c", "echo \"ran $HIGHLANDER_NAME on $HIGHLANDER_NODE\"; exit 7"],
            JournalEnvironment.For(_life, pg.ConnectionString));

        Assert.True(code == 7, cli.Output);
        Assert.True(cli.Stdout.Contains($"ran {_name} on cron1", StringComparison.Ordinal), cli.Output);

        // Released: the next run gets it at once.
        var (again, second) = await CliProcess.RunAsync(["run", "--once", "--name", _name, "--", "true"], JournalEnvironment.For(_life, pg.ConnectionString));
        Assert.True(again == 0, second.Output);
    }

    [Fact]
    public async Task Once_with_a_held_name_exits_3_at_once_without_running_the_command()
    {
        await using var holder = CliProcess.Start(["run", "--name", _name, "--node-id", "holder", .. RunTests.Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        await _life.Journal.WaitStartedAsync(_name, node: "holder");
        var marker = Path.Combine(_life.Path, "ran");

        var watch = Stopwatch.StartNew();
        var (code, cli) = await CliProcess.RunAsync(["run", "--once", "--name", _name, "--", "touch", marker], JournalEnvironment.For(_life, pg.ConnectionString));

        Assert.True(code == ExitCodes.HeldElsewhere, cli.Output);
        Assert.True(cli.Stderr.Contains("is held by node holder", StringComparison.Ordinal), cli.Output);
        Assert.False(File.Exists(marker), "the command must not run");
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"took {watch.Elapsed}: --wait 0 gives up at the first check");
    }

    [Fact]
    public async Task Once_with_wait_runs_the_command_when_the_holder_steps_down_within_the_wait()
    {
        var holder = CliProcess.Start(["run", "--name", _name, "--node-id", "holder", .. RunTests.Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        await using (holder)
        {
            await _life.Journal.WaitStartedAsync(_name, node: "holder");
            var once = CliProcess.Start(["run", "--once", "--wait", "1m", "--log-level", "information", "--name", _name, "--node-id", "cron", "--", "sh", "-c", JournalEnvironment.StartLine + "; exit 0"], JournalEnvironment.For(_life, pg.ConnectionString));
            await using (once)
            {
                await once.WaitLoggedAsync(HighlanderEventIds.Following); // led by holder, the only other node
                holder.Signal(HighlanderPG.Cli.Processes.Native.SigTerm);
                Assert.True(await once.WaitForExitAsync(TimeSpan.FromSeconds(30)) == 0, once.Output);
            }
        }

        _life.Journal.Poll();
        var lines = _life.Journal.Events;
        var stop = lines.Single(l => l.Kind == LifeKind.Stopped && l.Node == "holder");
        var cron = lines.Single(l => l.Kind == LifeKind.Started && l.Node == "cron");
        Assert.True(stop.Seq < cron.Seq, _life.Journal.Describe());
    }

    [Fact]
    public async Task Once_that_loses_the_name_while_the_command_runs_exits_5_and_says_it_lost_it()
    {
        var once = CliProcess.Start(["run", "--once", "--name", _name, "--node-id", "losing", .. RunTests.Timings[..8], "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        await using (once)
        {
            await _life.Journal.WaitStartedAsync(_name, node: "losing");

            // Its lock session ends (killed on the server): the lock goes with it, and the command is stopped.
            await using (var connection = new Npgsql.NpgsqlConnection(pg.ConnectionString))
            {
                await connection.OpenAsync();
                await using var kill = new Npgsql.NpgsqlCommand("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", connection);
                kill.Parameters.Add(new Npgsql.NpgsqlParameter<string> { TypedValue = "highlander/losing" });
                Assert.Equal(1L, (long)(await kill.ExecuteScalarAsync())!);
            }

            Assert.True(await once.WaitForExitAsync(TimeSpan.FromSeconds(60)) == ExitCodes.Interrupted, once.Output);
            Assert.True(once.Stderr.Contains($"interrupted: this node lost '{_name}'", StringComparison.Ordinal), once.Output);
            Assert.False(once.Stderr.Contains("was told to stop", StringComparison.Ordinal), once.Output);
        }
    }

    [Fact]
    public async Task Once_with_an_unreachable_server_exits_4_and_never_prints_the_password()
    {
        var watch = Stopwatch.StartNew();
        var (code, cli) = await CliProcess.RunAsync(
            ["run", "--once", "--name", _name, "--connection", "Host=127.0.0.1;Port=1;Username=u;Password=s3cret-pw;Database=jobs", "--", "true"]);

        Assert.True(code == ExitCodes.CannotConnect, cli.Output);
        Assert.True(cli.Stderr.Contains("cannot connect to 127.0.0.1:1/jobs", StringComparison.Ordinal), cli.Output);
        Assert.False(cli.Output.Contains("s3cret-pw", StringComparison.Ordinal), cli.Output);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(15), $"took {watch.Elapsed}");
    }

    public void Dispose() => _life.Dispose();
}
