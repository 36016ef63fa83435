using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Hosting;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace HighlanderPG.Tests.Diagnostics;

/// <summary>A server of this class's own: its port tells its traffic apart, and its pg_hba.conf can demand passwords.</summary>
public sealed class OwnServerFixture : IAsyncLifetime
{
    private LocalPostgresServer? _server;

    public LocalPostgresServer Server => _server ?? throw new InvalidOperationException("The fixture has not started.");

    public async Task InitializeAsync() => _server = await LocalPostgresServer.StartAsync();

    public async Task DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }
    }
}

public sealed class NpgsqlIntegrationTests(OwnServerFixture fixture) : IClassFixture<OwnServerFixture>
{
    private const string UserMarker = "highlander-test-user-command";

    [Fact]
    public void The_hook_runs_but_cannot_make_the_sessions_pooled_or_rename_them()
    {
        var options = new HighlanderOptions
        {
            ConfigureDataSource = b =>
            {
                b.ConnectionStringBuilder.Pooling = true;
                b.ConnectionStringBuilder.Multiplexing = true;
                b.ConnectionStringBuilder.ApplicationName = "mine";
                b.ConnectionStringBuilder.KeepAlive = 30;
                b.ConnectionStringBuilder.CommandTimeout = 999;
                b.ConnectionStringBuilder.Enlist = true;
                b.ConnectionStringBuilder.SearchPath = "kept";
            },
        };
        var source = ConnectionSettings.Parse("Host=db.invalid;Database=d;Username=u");
        using var dataSource = ConnectionSettings.BuildDataSource(source, "highlander/n1", options, NullLoggerFactory.Instance);
        var built = new NpgsqlConnectionStringBuilder(dataSource.ConnectionString);
        Assert.Equal("kept", built.SearchPath); // the hook ran
        Assert.False(built.Pooling);
        Assert.False(built.Multiplexing);
        Assert.Equal("highlander/n1", built.ApplicationName);
        Assert.Equal(0, built.KeepAlive);
        Assert.Equal((int)Math.Ceiling(options.LeaseDuration.TotalSeconds), built.CommandTimeout);
        Assert.False(built.Enlist);
    }

    [Fact]
    public async Task A_periodic_password_provider_supplies_the_password_and_the_node_leads()
    {
        var server = fixture.Server;
        var role = "pw_" + Guid.NewGuid().ToString("N")[..10];
        var password = Guid.NewGuid().ToString("N");
        await Db.ScalarAsync<object>(server.ConnectionString, $"CREATE ROLE {role} LOGIN PASSWORD '{password}'");

        // This role (only) must authenticate with its password: a line ahead of the server's trust lines.
        var hba = Path.Combine(server.DataDirectory, "pg_hba.conf");
        await File.WriteAllTextAsync(hba, $"host all {role} all scram-sha-256\n" + await File.ReadAllTextAsync(hba));
        await Db.ScalarAsync<bool>(server.ConnectionString, "SELECT pg_reload_conf()");
        var withoutPassword = new NpgsqlConnectionStringBuilder(server.ConnectionString) { Username = role, Password = null, Pooling = false }.ConnectionString;

        // The reload is applied asynchronously by the postmaster: wait until a password-less login is refused.
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            while (true)
            {
                try
                {
                    await using var probe = new NpgsqlConnection(withoutPassword);
                    await probe.OpenAsync(cts.Token);
                }
                catch (NpgsqlException ex) when (ex is not PostgresException || ((PostgresException)ex).SqlState == PostgresErrorCodes.InvalidPassword)
                {
                    break;
                }

                await Task.Delay(50, cts.Token);
            }
        }

        var calls = 0;
        try
        {
            await using var cluster = new TestCluster(server.ConnectionString);
            var node = await cluster.StartNodeAsync("pw-node", connectionString: withoutPassword, configure: o => o.ConfigureDataSource = b => b.UsePeriodicPasswordProvider(
                (_, _) =>
                {
                    Interlocked.Increment(ref calls);
                    return ValueTask.FromResult(password);
                },
                TimeSpan.FromMinutes(5),
                TimeSpan.FromMilliseconds(100)));
            var leading = await node.WaitForStateAsync("job", SingletonState.Leading);
            Assert.Equal("pw-node", leading.Leader?.NodeId);
            Assert.Equal(role, await Db.ScalarAsync<string>(server.ConnectionString, "SELECT usename::text FROM pg_stat_activity WHERE application_name = 'highlander/pw-node'"));
            Assert.True(Volatile.Read(ref calls) >= 1);
            Assert.DoesNotContain(cluster.Logs.Entries, e => e.Message.Contains(password, StringComparison.Ordinal));
        }
        finally
        {
            await Db.ScalarAsync<object>(server.ConnectionString, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role);
            await Db.ScalarAsync<object>(server.ConnectionString, $"DROP ROLE IF EXISTS {role}");
        }
    }

    [Fact]
    public async Task An_app_tracing_Npgsql_sees_its_own_commands_but_none_of_the_sessions_statements()
    {
        var server = fixture.Server;
        var port = server.Port.ToString(CultureInfo.InvariantCulture);

        // The app's own data source, pooled, opened once before tracing starts: from then on every Npgsql activity on
        // this server's port is either the app's command (marked) or one of HighlanderPG's sessions.
        await using var app = NpgsqlDataSource.Create(server.ConnectionString);
        await (await app.OpenConnectionAsync()).DisposeAsync();

        var seen = new ConcurrentQueue<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == "Npgsql",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = seen.Enqueue,
        };
        ActivitySource.AddActivityListener(listener);

        await using var cluster = new TestCluster(server.ConnectionString);

        // A hook that asks for every command to be traced does not win: HighlanderPG's filter is applied after it.
        var leader = await cluster.StartNodeAsync("traced-leader", configure: o => o.ConfigureDataSource = b => b.ConfigureTracing(t => t.ConfigureCommandFilter(_ => true)));
        await leader.WaitForStateAsync("job", SingletonState.Leading);
        var follower = await cluster.StartNodeAsync("traced-follower");
        await follower.WaitForLeaderAsync("job", "traced-leader");

        // Several heartbeats of the leader's lock session and several wait slices of the follower's wait session, seen
        // from the server (each one is a new statement of that backend), through the app's traced data source.
        var starts = new Dictionary<string, HashSet<DateTime>>();
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
        {
            while (!(Count("highlander/traced-leader") >= 4 && Count("highlander-wait/traced-follower") >= 3))
            {
                await using var cmd = app.CreateCommand($"""
                    SELECT application_name, query_start FROM pg_stat_activity /* {UserMarker} */
                    WHERE application_name IN ('highlander/traced-leader', 'highlander-wait/traced-follower') AND query_start IS NOT NULL
                    """);
                await using var reader = await cmd.ExecuteReaderAsync(cts.Token);
                while (await reader.ReadAsync(cts.Token))
                {
                    var name = reader.GetString(0);
                    (starts.TryGetValue(name, out var set) ? set : starts[name] = []).Add(reader.GetDateTime(1));
                }

                await Task.Delay(100, cts.Token);
            }
        }

        int Count(string name) => starts.TryGetValue(name, out var set) ? set.Count : 0;

        await follower.StopAsync();
        await leader.StopAsync();
        var onThisServer = seen.Where(a => a.TagObjects.Any(t => Convert.ToString(t.Value, CultureInfo.InvariantCulture) == port)).ToList();
        string Describe(Activity a) => a.OperationName + " {" + string.Join(", ", a.TagObjects.Select(t => $"{t.Key}={t.Value}")) + "}";

        Assert.Contains(onThisServer, a => a.TagObjects.Any(t => t.Value is string s && s.Contains(UserMarker, StringComparison.Ordinal)));
        var notTheApps = onThisServer.Where(a => !a.TagObjects.Any(t => t.Value is string s && s.Contains(UserMarker, StringComparison.Ordinal))).ToList();
        Assert.True(notTheApps.Count == 0, "traced statements of HighlanderPG's sessions:\n" + string.Join("\n", notTheApps.Take(10).Select(Describe)));
    }
}
