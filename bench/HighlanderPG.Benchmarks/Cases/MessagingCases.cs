using System.Diagnostics;
using System.Globalization;
using System.Text;
using HighlanderPG.Benchmarks.Infrastructure;
using HighlanderPG.Benchmarks.Reporting;
using HighlanderPG.Messaging;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Benchmarks.Cases;

/// <summary>
/// The messaging suite (<c>--suite messaging</c>): a call to an idle singleton, the caller on another node, against
/// the floor of raw NOTIFY round trips on the same server; and messages per second sustained. See docs/messaging.md.
/// </summary>
internal static class MessagingCases
{
    private const string Singleton = "bench-inbox";
    private const string Namespace = "bench-messaging";

    // When the leader's handler got each call (by its number): splits a call's time into "to the handler" and "back".
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<int, long> HandlerStarted = new();

    public static async Task<bool> RunAsync(BenchmarkSettings settings, string connectionString, EnvironmentInfo environment, DateTimeOffset started, CancellationToken ct)
    {
        var iterations = settings.Iterations * 10;
        var schema = "bench_msg_" + Guid.NewGuid().ToString("N")[..8];
        var effects = "public." + schema + "_effects";
        await ExecAsync(connectionString, $"CREATE TABLE {effects} (message_id bigint NOT NULL, n integer NOT NULL)", ct);
        var startLoad = BenchContext.LoadAverage();

        // The leader: a node (its own host, sessions and data sources) whose child replies to calls and, for sends, writes an effect row.
        using var leader = BuildNode(connectionString, "bench-leader", schema, effects, settings.Verbose);
        await leader.StartAsync(ct);
        await WaitLeadingAsync(leader, ct);

        // The caller: another node of the cluster (its own host, not leading this singleton), calling through its own client.
        using var caller = BuildNode(connectionString, "bench-caller", schema, effects, settings.Verbose, runsSingleton: false);
        await caller.StartAsync(ct);
        var client = caller.Services.GetRequiredService<SingletonClient>();

        Console.Error.WriteLine($"messaging: {iterations} calls, interleaved with as many floor round trips of each kind");
        var pingPong = new List<double>();
        var matched = new List<double>();
        var calls = new List<double>();
        var toHandler = new List<double>();
        var back = new List<double>();
        await using (var floor = await NotifyFloor.OpenAsync(connectionString, ct))
        {
            for (var i = 0; i < 20; i++)
            {
                await floor.RoundTripAsync(0, ct);
                await floor.RoundTripAsync(2, ct);
                await client.CallAsync<Ping, Pong>(Singleton, new Ping(i), TimeSpan.FromSeconds(30), ct);
            }

            for (var i = 0; i < iterations; i++)
            {
                pingPong.Add(await floor.RoundTripAsync(0, ct));
                await Task.Delay(5, ct);
                matched.Add(await floor.RoundTripAsync(2, ct));
                await Task.Delay(5, ct);
                var start = Stopwatch.GetTimestamp();
                var pong = await client.CallAsync<Ping, Pong>(Singleton, new Ping(i), TimeSpan.FromSeconds(30), ct);
                var end = Stopwatch.GetTimestamp();
                calls.Add(Stopwatch.GetElapsedTime(start, end).TotalMilliseconds);
                if (HandlerStarted.TryRemove(i, out var handled))
                {
                    toHandler.Add(Stopwatch.GetElapsedTime(start, handled).TotalMilliseconds);
                    back.Add(Stopwatch.GetElapsedTime(handled, end).TotalMilliseconds);
                }
                if (pong.N != i)
                {
                    throw new InvalidOperationException($"call {i} got the reply of {pong.N}");
                }

                await Task.Delay(5, ct);
            }
        }

        // Sustained: 4 senders (the caller node's client) as fast as they can for the window; the leader processes
        // each message in its own transaction with an effect row. Rates over the window, then the time to drain.
        var window = TimeSpan.FromSeconds(15);
        Console.Error.WriteLine($"messaging: sustained sends for {window.TotalSeconds} s");
        var sent = 0L;
        var full = 0L;
        var doneBefore = await CountAsync(connectionString, effects, ct);
        var windowStart = Stopwatch.GetTimestamp();
        using (var stop = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            stop.CancelAfter(window);
            var senders = Enumerable.Range(0, 4).Select(s => Task.Run(async () =>
            {
                var n = s * 10_000_000;
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        await client.SendAsync(Singleton, new Ping(++n), cancellationToken: CancellationToken.None);
                        Interlocked.Increment(ref sent);
                    }
                    catch (MessagingException ex) when (ex.Error == MessagingError.QueueFull)
                    {
                        Interlocked.Increment(ref full);
                        await Task.Delay(10, CancellationToken.None);
                    }
                }
            }, CancellationToken.None)).ToArray();
            await Task.WhenAll(senders);
        }

        var windowElapsed = Stopwatch.GetElapsedTime(windowStart);
        var processedInWindow = await CountAsync(connectionString, effects, ct) - doneBefore;
        var total = sent;
        while (await CountAsync(connectionString, effects, ct) - doneBefore < total)
        {
            await Task.Delay(50, ct);
        }

        var drained = Stopwatch.GetElapsedTime(windowStart);
        var duplicates = await ScalarAsync<long>(connectionString, $"SELECT count(*) FROM (SELECT message_id FROM {effects} GROUP BY message_id HAVING count(*) > 1) d", ct);
        await caller.StopAsync(CancellationToken.None);
        await leader.StopAsync(CancellationToken.None);
        var endLoad = BenchContext.LoadAverage();

        var report = Render(environment with { LoadAverageAtStart = startLoad, LoadAverageAtEnd = endLoad }, settings, started, iterations, pingPong, matched, calls, toHandler, back,
            new Sustained(window, windowElapsed, total, full, processedInWindow, drained, duplicates));
        Console.WriteLine(report);
        var root = environment.RepositoryRoot ?? Environment.CurrentDirectory;
        var path = settings.OutPath is { } o ? Path.GetFullPath(o) : Path.Combine(root, "bench", "results", $"messaging-{started.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)}.md");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        await File.WriteAllTextAsync(path, report, CancellationToken.None);
        Console.WriteLine($"Report written to {Path.GetRelativePath(Environment.CurrentDirectory, path)}");
        return duplicates != 0;
    }

    private sealed record Ping(int N);

    private sealed record Pong(int N);

    private sealed record Sustained(TimeSpan Window, TimeSpan WindowElapsed, long Sent, long Full, long ProcessedInWindow, TimeSpan Drained, long Duplicates);

    private static IHost BuildNode(string connectionString, string nodeId, string schema, string effects, bool verbose, bool runsSingleton = true)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        if (verbose)
        {
            builder.Logging.AddSimpleConsole().SetMinimumLevel(LogLevel.Information);
        }

        builder.Services.AddHighlander(o =>
        {
            o.ConnectionString = connectionString;
            o.Namespace = Namespace;
            o.NodeId = nodeId;
            o.Fencing = true;
            o.FencingSchema = schema;
        });
        builder.Services.AddHighlanderMessaging(o => o.MaxPending = 100_000);
        if (runsSingleton)
        {
            builder.Services.AddClusterSingleton(Singleton, (leadership, services, ct) =>
            {
                var inbox = services.GetRequiredService<ISingletonInbox>();
                return inbox.ProcessAsync(async (message, tx, token) =>
                {
                    var ping = message.GetPayload<Ping>();
                    if (message.IsCall)
                    {
                        HandlerStarted[ping.N] = Stopwatch.GetTimestamp();
                        await inbox.ReplyAsync(message, new Pong(ping.N), tx, token);
                        return;
                    }

                    await using var cmd = new NpgsqlCommand($"INSERT INTO {effects} (message_id, n) VALUES ($1, $2)", tx.Connection, tx);
                    cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = message.Id });
                    cmd.Parameters.Add(new NpgsqlParameter<int> { TypedValue = ping.N });
                    await cmd.ExecuteNonQueryAsync(token);
                }, ct);
            });
        }

        return builder.Build();
    }

    private static async Task WaitLeadingAsync(IHost node, CancellationToken ct)
    {
        var singletons = node.Services.GetRequiredService<IClusterSingletons>();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(60));
        while (singletons.Get(Singleton)?.State != SingletonState.Leading)
        {
            await Task.Delay(20, timeout.Token);
        }
    }

    private static string Render(EnvironmentInfo environment, BenchmarkSettings settings, DateTimeOffset started, int iterations,
        List<double> pingPong, List<double> matched, List<double> calls, List<double> toHandler, List<double> back, Sustained sustained)
    {
        var text = new StringBuilder();
        var c = CultureInfo.InvariantCulture;
        text.AppendLine(c, $"# Messaging: calls and sustained messages ({started:yyyy-MM-dd HH:mm} UTC, commit {environment.Commit})");
        text.AppendLine();
        text.AppendLine(c, $"`{settings.CommandLine}`");
        text.AppendLine();
        text.AppendLine(c, $"- **Machine:** {environment.Machine}; {environment.Runtime}");
        text.AppendLine(c, $"- **PostgreSQL:** {environment.ServerVersion}; {environment.ServerDescription}");
        text.AppendLine(c, $"- **Server settings:** {string.Join(", ", environment.ServerSettings.Select(s => $"`{s.Name}` = {s.Value}"))}");
        text.AppendLine(c, $"- **Machine load:** 1-minute load average {Load(environment.LoadAverageAtStart)} at the start, {Load(environment.LoadAverageAtEnd)} at the end, on {Environment.ProcessorCount} cores");
        text.AppendLine();
        text.AppendLine("## A call to an idle singleton, the caller on another node");
        text.AppendLine();
        text.AppendLine(c, $"{iterations} iterations of each, interleaved (ping-pong, matched floor, call; 5 ms apart, so the singleton is idle at each call), after 20 unmeasured. ");
        text.AppendLine("The leader and the caller are two HighlanderPG nodes (two hosts with their own sessions and data sources) in the benchmark's process; the caller calls through its node's `SingletonClient`, the leader's child replies through `ProcessAsync` + `ReplyAsync` (its transaction: take, BEGIN + `ack_message` with the reply, COMMIT, which delivers the reply's NOTIFY).");
        text.AppendLine();
        text.AppendLine("| case | p50 | p90 | p99 | max |");
        text.AppendLine("|---|--:|--:|--:|--:|");
        Row("floor: raw NOTIFY ping-pong (A: `SELECT pg_notify`; B, LISTENing, wakes and `SELECT pg_notify` back; A wakes)", pingPong);
        Row("floor, round trips matched: the same, B making 3 round trips (2 × `SELECT 1`, then the notify) as the leader does for a call (take, ack, commit)", matched);
        Row("**HighlanderPG call** (`CallAsync` to `ReplyAsync`, reply received)", calls);
        Row("… of which: from `CallAsync` to the leader's handler (send: 1 round trip + NOTIFY; leader wakes, takes: 1 round trip)", toHandler);
        Row("… of which: from the handler to the reply received (BEGIN + `ack_message`: 1 round trip; COMMIT: 1, with the reply's NOTIFY; caller wakes)", back);
        text.AppendLine();
        text.AppendLine(c, $"Call p50 / ping-pong p50: {Percentile(calls, 50) / Percentile(pingPong, 50):0.0}x; call p50 / matched floor p50: {Percentile(calls, 50) / Percentile(matched, 50):0.0}x; p99: {Percentile(calls, 99) / Percentile(matched, 99):0.0}x the matched floor's.");
        text.AppendLine();
        text.AppendLine("## Messages per second, sustained");
        text.AppendLine();
        text.AppendLine(c, $"4 concurrent senders (the caller node's client, `SendAsync`, each awaiting its send) for {sustained.Window.TotalSeconds:0} s; the leader processes each message in its own transaction with one effect row (`INSERT`), acknowledged in it.");
        text.AppendLine();
        text.AppendLine("| measure | value |");
        text.AppendLine("|---|--:|");
        text.AppendLine(c, $"| messages sent (durable) | {sustained.Sent:N0} |");
        text.AppendLine(c, $"| sends per second | {sustained.Sent / sustained.WindowElapsed.TotalSeconds:N0} |");
        text.AppendLine(c, $"| processed (effect + ack committed) per second, during the window | {sustained.ProcessedInWindow / sustained.WindowElapsed.TotalSeconds:N0} |");
        text.AppendLine(c, $"| processed per second, until the last was processed | {sustained.Sent / sustained.Drained.TotalSeconds:N0} |");
        text.AppendLine(c, $"| time until the last was processed | {sustained.Drained.TotalSeconds:0.0} s |");
        text.AppendLine(c, $"| sends refused: queue full | {sustained.Full:N0} |");
        text.AppendLine(c, $"| messages whose effect exists more than once | {sustained.Duplicates:N0} |");
        return text.ToString();

        void Row(string name, List<double> values) =>
            text.AppendLine(c, $"| {name} | {Ms(Percentile(values, 50))} | {Ms(Percentile(values, 90))} | {Ms(Percentile(values, 99))} | {Ms(values.Max())} |");
        static string Ms(double ms) => ms < 10 ? ms.ToString("0.00", CultureInfo.InvariantCulture) + " ms" : ms.ToString("0.0", CultureInfo.InvariantCulture) + " ms";
        static string Load(double? l) => l is { } v ? v.ToString("0.00", CultureInfo.InvariantCulture) : "n/a";
    }

    private static double Percentile(List<double> values, int p)
    {
        var sorted = values.Order().ToArray();
        var rank = (int)Math.Ceiling(p / 100.0 * sorted.Length) - 1;
        return sorted[Math.Clamp(rank, 0, sorted.Length - 1)];
    }

    private static async Task ExecAsync(string connectionString, string sql, CancellationToken ct)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync(ct);
        await using var cmd = new NpgsqlCommand(sql, connection);
        await cmd.ExecuteNonQueryAsync(ct);
    }

    private static Task<long> CountAsync(string connectionString, string table, CancellationToken ct) => ScalarAsync<long>(connectionString, $"SELECT count(*) FROM {table}", ct);

    private static async Task<T> ScalarAsync<T>(string connectionString, string sql, CancellationToken ct)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync(ct);
        await using var cmd = new NpgsqlCommand(sql, connection);
        return (T)(await cmd.ExecuteScalarAsync(ct))!;
    }

    /// <summary>Two dedicated connections, A and B, each LISTENing; B answers A's notifications from a loop of its own.</summary>
    private sealed class NotifyFloor : IAsyncDisposable
    {
        private readonly NpgsqlConnection _a;
        private readonly NpgsqlConnection _b;
        private readonly CancellationTokenSource _stop = new();
        private readonly SemaphoreSlim _pong = new(0);
        private Task _responder = Task.CompletedTask;
        private int _extra;

        private NotifyFloor(NpgsqlConnection a, NpgsqlConnection b)
        {
            _a = a;
            _b = b;
        }

        public static async Task<NotifyFloor> OpenAsync(string connectionString, CancellationToken ct)
        {
            var unpooled = new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false }.ConnectionString;
            var a = new NpgsqlConnection(unpooled);
            var b = new NpgsqlConnection(unpooled);
            await a.OpenAsync(ct);
            await b.OpenAsync(ct);
            var floor = new NotifyFloor(a, b);
            a.Notification += (_, _) => floor._pong.Release();
            await using (var listen = new NpgsqlCommand("LISTEN bench_pong", a))
            {
                await listen.ExecuteNonQueryAsync(ct);
            }

            await using (var listen = new NpgsqlCommand("LISTEN bench_ping", b))
            {
                await listen.ExecuteNonQueryAsync(ct);
            }

            floor._responder = Task.Run(floor.RespondAsync, CancellationToken.None);
            return floor;
        }

        /// <summary>One ping-pong; B makes <paramref name="extra"/> more round trips before answering. Milliseconds.</summary>
        public async Task<double> RoundTripAsync(int extra, CancellationToken ct)
        {
            Volatile.Write(ref _extra, extra);
            var start = Stopwatch.GetTimestamp();
            await using (var ping = new NpgsqlCommand("SELECT pg_notify('bench_ping', 'x')", _a))
            {
                await ping.ExecuteNonQueryAsync(ct);
            }

            // The pong may have been read with the ping's own reply; otherwise wait on the connection for it.
            while (!_pong.Wait(0))
            {
                await _a.WaitAsync(ct);
            }

            return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }

        private async Task RespondAsync()
        {
            var pings = 0;
            _b.Notification += (_, _) => pings++;
            try
            {
                while (true)
                {
                    await _b.WaitAsync(_stop.Token);
                    for (; pings > 0; pings--)
                    {
                        for (var i = Volatile.Read(ref _extra); i > 0; i--)
                        {
                            await using var select = new NpgsqlCommand("SELECT 1", _b);
                            await select.ExecuteScalarAsync(_stop.Token);
                        }

                        await using var pong = new NpgsqlCommand("SELECT pg_notify('bench_pong', 'x')", _b);
                        await pong.ExecuteNonQueryAsync(_stop.Token);
                    }
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await _responder;
            await _a.DisposeAsync();
            await _b.DisposeAsync();
            _stop.Dispose();
            _pong.Dispose();
        }
    }
}
