using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Npgsql;

namespace HighlanderPG.FaultRun;

/// <summary>The default mode: start the cluster, run the nemesis's rounds, check the history, write the report.</summary>
internal static class Coordinator
{
    public static async Task<int> MainAsync(string[] args)
    {
        Settings settings;
        try
        {
            settings = Settings.Parse(args);
        }
        catch (Exception ex) when (ex is ArgumentException or FormatException)
        {
            Console.Error.WriteLine($"fault-run: {ex.Message}");
            Console.Error.WriteLine("usage: fault-run [--seed N] [--nodes 5] [--singletons 50] [--faults K | --duration D] [--connection CS] [--report DIR] [--smoke] [--lease 2s] [--cli-hosts 2] [--cli-singletons 3]");
            return 2;
        }

        var began = DateTimeOffset.UtcNow;
        var reportDir = Path.GetFullPath(settings.ReportDirectory ?? Path.Combine("artifacts", "fault-run", string.Create(CultureInfo.InvariantCulture, $"{began:yyyyMMdd-HHmmss}-seed{settings.Seed}")));
        var runDir = Path.Combine(reportDir, "run");
        if (Directory.Exists(runDir))
        {
            Directory.Delete(runDir, recursive: true);
        }

        var historyDir = RunEnvironment.HistoryDirectory(runDir);
        Directory.CreateDirectory(historyDir);
        using var history = new HistoryWriter(historyDir, "coordinator", "coord", "coordinator");
        using var cancel = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; cancel.Cancel(); });
        static void Say(string line) => Console.WriteLine($"[{DateTimeOffset.UtcNow:HH:mm:ss}] {line}");

        Say($"fault run: seed {settings.Seed}, {settings.Nodes} hosts ({settings.Nodes - settings.CliHosts} library nodes with {settings.Singletons} singletons; {settings.CliHosts} hosts of `highlander run` for {settings.CliSingletons} of them), lease {settings.Lease.TotalSeconds:0.###} s, {(settings.Faults is { } f ? $"{f} faults" : $"for {settings.Duration}")}; report in {reportDir}");
        var rounds = new List<RoundRecord>();
        var stopwatch = Stopwatch.StartNew();
        var book = new LifeBook();
        var tail = new HistoryTail(historyDir) { SkipEnded = true };
        var gone = new HashSet<int>();
        var bookGate = new Lock();
        Cluster? cluster = null;
        List<DbRow> guarded = [], unguarded = [];
        string? aborted = null;
        try
        {
            cluster = await Cluster.StartAsync(settings, runDir, history, Say);
            var poller = Task.Run(async () =>
            {
                while (!cancel.IsCancellationRequested)
                {
                    lock (bookGate)
                    {
                        foreach (var e in tail.ReadNew().OrderBy(e => e.Mono))
                        {
                            book.Feed(e);
                        }

                        foreach (var pid in book.OpenPids.ToList())
                        {
                            if (!Native.Alive(pid) && gone.Add(pid))
                            {
                                history.Write("gone", detail: $"pid={pid}");
                            }
                        }
                    }

                    try
                    {
                        await Task.Delay(100, cancel.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            });

            bool Recovered(out string why)
            {
                lock (bookGate)
                {
                    return book.Recovered(cluster.Singletons, Mono.Now(), out why);
                }
            }

            // Warm-up: every singleton running exactly once.
            var warm = Mono.Now() + Mono.FromSeconds(180);
            var why = "";
            while (!Recovered(out why) && Mono.Now() < warm)
            {
                await Task.Delay(200, cancel.Token);
            }

            if (!Recovered(out why))
            {
                throw new InvalidOperationException($"the cluster never reached one run of every singleton: {why}");
            }

            Say($"warm: every singleton runs once ({stopwatch.Elapsed.TotalSeconds:0.0} s)");
            var schedule = new Schedule(settings, cluster.ClockUnavailable is null, cluster.Server is not null);
            var nemesis = new Nemesis(cluster, () => book, settings);
            var faults = 0;
            var runStart = stopwatch.Elapsed;
            var recoveryBound = Mono.FromSeconds((2 * settings.Lease.TotalSeconds) + 3);
            while (!cancel.IsCancellationRequested
                && (settings.Faults is { } max ? faults < max : stopwatch.Elapsed - runStart < settings.Duration))
            {
                var plans = schedule.NextRound();
                // The targets up with their lock sessions, and a library host the round leaves alone (for a server fault: all).
                var ready = Mono.Now() + Mono.FromSeconds(30);
                var targets = plans.Where(p => p.Host >= 0).Select(p => p.Host).ToList();
                while (Mono.Now() < ready && !await cluster.ReadyForAsync(targets, plans.Any(p => p.Host < 0), cancel.Token))
                {
                    await Task.Delay(200, cancel.Token);
                }

                var round = new RoundRecord(rounds.Count) { Start = Mono.Now() };
                rounds.Add(round);
                FaultRecord[] records;
                lock (bookGate)
                {
                    // Start from the newest view of who runs what.
                    foreach (var e in tail.ReadNew().OrderBy(e => e.Mono))
                    {
                        book.Feed(e);
                    }
                }

                var hosts = plans.Select(p => p.Host).ToList();
                records = await Task.WhenAll(plans.Select(p => nemesis.InjectAsync(p, hosts.Where(h => h != p.Host).ToList(), cancel.Token)));
                round.Faults.AddRange(records);
                faults += records.Length;
                round.LastFaultEnd = records.Max(r => r.End);
                while (Mono.Now() - round.LastFaultEnd < recoveryBound)
                {
                    if (Recovered(out why))
                    {
                        round.RecoveredAt = Mono.Now();
                        break;
                    }

                    await Task.Delay(50, cancel.Token);
                }

                if (round.RecoveredAt is null)
                {
                    round.NotRecovered = why;
                    // Let it settle, so that one failure does not cascade into the next rounds' checks.
                    var settle = Mono.Now() + Mono.FromSeconds(30);
                    while (!Recovered(out _) && Mono.Now() < settle)
                    {
                        await Task.Delay(100, cancel.Token);
                    }
                }

                Say(string.Create(CultureInfo.InvariantCulture,
                    $"round {round.Index}: {string.Join(", ", records.Select(r => $"{r.Plan.Kind}@{r.HostName}{(r.Note.Length > 0 ? "(" + r.Note + ")" : "")}"))} -> {(round.RecoveredAt is { } at ? $"recovered {Mono.Seconds(at - round.LastFaultEnd):0.00} s after" : "NOT RECOVERED: " + round.NotRecovered)} [{faults} faults, {stopwatch.Elapsed.TotalMinutes:0.0} min]"));
            }

            await Task.Delay(1000, CancellationToken.None);
            (guarded, unguarded) = await ReadRowsAsync(cluster.AdminConnectionString);
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            aborted = "interrupted";
            Say("interrupted: stopping every process and server of the run");
        }
        catch (Exception ex) when (ex is InvalidOperationException or NpgsqlException or IOException)
        {
            aborted = ex.Message;
            Say($"aborted: {ex.Message}");
        }
        finally
        {
            await cancel.CancelAsync();
            if (cluster is not null)
            {
                await cluster.DisposeAsync();
            }
        }

        var events = new HistoryTail(historyDir).ReadNew().OrderBy(e => e.Mono).ToList();
        var result = Checker.Check(settings, cluster!, rounds, events, guarded, unguarded);
        if (settings.Smoke && aborted is null)
        {
            // The smoke promises every available fault kind: one that was not run is a failure. A kind this machine cannot
            // inject is listed as not available, with its reason, in the table: never a pass.
            foreach (var kind in FaultKinds.All.Where(k => result.Checks.All(c => c.Fault.Plan.Kind != k)))
            {
                var unavailable = (kind == FaultKind.ClockJump && cluster!.ClockUnavailable is not null) || (FaultKinds.IsGlobal(kind) && cluster!.Server is null);
                if (!unavailable)
                {
                    result.Unattributed.Add($"smoke: {FaultKinds.Name(kind)} was not run");
                }
            }
        }

        var report = Report.Write(reportDir, settings, cluster!, result, began, stopwatch.Elapsed, aborted);
        Console.WriteLine(report.Table);
        var notAvailable = cluster!.ClockUnavailable is not null ? $", wall-clock jump not available ({cluster.ClockUnavailable})" : "";
        Console.WriteLine($"{result.Passed} passed, {result.Failed} failed{notAvailable}{(aborted is null ? "" : $" (run aborted: {aborted})")}");
        Console.WriteLine($"report: {Path.Combine(reportDir, "report.md")}");
        return result.Failed > 0 || aborted is not null || result.Passed == 0 ? 1 : 0;
    }

    private static async Task<(List<DbRow>, List<DbRow>)> ReadRowsAsync(string connectionString)
    {
        static async Task<List<DbRow>> Read(NpgsqlConnection conn, string table)
        {
            var rows = new List<DbRow>();
            await using var cmd = new NpgsqlCommand($"SELECT id, singleton, epoch, host, node, pid, mono FROM faultrun.{table} ORDER BY id", conn);
            await using var reader = await cmd.ExecuteReaderAsync();
            while (await reader.ReadAsync())
            {
                rows.Add(new DbRow(reader.GetInt64(0), reader.GetString(1), reader.GetInt64(2), reader.GetString(3), reader.GetString(4), reader.GetInt32(5), reader.GetInt64(6)));
            }

            return rows;
        }

        for (var attempt = 0; ; attempt++)
        {
            try
            {
                await using var conn = new NpgsqlConnection(connectionString);
                await conn.OpenAsync();
                return (await Read(conn, "guarded"), await Read(conn, "unguarded"));
            }
            catch (NpgsqlException) when (attempt < 20)
            {
                await Task.Delay(500);
            }
        }
    }
}

internal sealed record DbRow(long Id, string Singleton, long Epoch, string Host, string Node, int Pid, long Mono);
