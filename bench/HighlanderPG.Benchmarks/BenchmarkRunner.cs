using HighlanderPG.Benchmarks.Cases;
using HighlanderPG.Benchmarks.Infrastructure;
using HighlanderPG.Benchmarks.Measurement;
using HighlanderPG.Benchmarks.Reporting;
using HighlanderPG.Testing;

namespace HighlanderPG.Benchmarks;

/// <summary>Starts (or connects to) PostgreSQL, runs the cases in order, prints and writes the report.</summary>
internal static class BenchmarkRunner
{
    public static async Task<int> RunAsync(string[] args)
    {
        var settings = BenchmarkSettings.Parse(args, out var error);
        if (error is not null)
        {
            if (error.Length > 0)
            {
                await Console.Error.WriteLineAsync(error);
            }

            await Console.Error.WriteLineAsync(BenchmarkSettings.Usage);
            return error.Length > 0 ? 2 : 0;
        }

        using var cancel = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            cancel.Cancel();
        };

        var started = DateTimeOffset.UtcNow;
        LocalPostgresServer? server = null;
        try
        {
            string connectionString;
            if (settings.Connection is null)
            {
                await Console.Error.WriteLineAsync("Starting a throwaway PostgreSQL server (LocalPostgresServer)...");
                // The statement counts of the scale suite read the server's log, by application_name.
                var options = new LocalPostgresOptions();
                options.ExtraSettings["log_line_prefix"] = StatementLog.LinePrefix;
                server = await LocalPostgresServer.StartAsync(options, cancel.Token);
                connectionString = server.ConnectionString;
            }
            else
            {
                connectionString = settings.Connection;
            }

            await using var probe = await LockProbe.OpenAsync(connectionString, cancel.Token);
            using var context = new BenchContext(connectionString, settings, probe);
            var environment = await EnvironmentInfo.CollectAsync(connectionString, server, cancel.Token);
            context.Progress($"PostgreSQL {environment.ServerVersion}; seed {settings.Seed}");

            var ct = cancel.Token;
            var failed = false;
            if (settings.RunsHandover)
            {
                failed |= await RunHandoverAsync(settings, context, probe, environment, started, ct);
            }

            if (settings.RunsMessaging)
            {
                await WaitForLockDelayAsync(context, probe, ct);
                failed |= await MessagingCases.RunAsync(settings, connectionString, environment, started, ct);
            }

            if (settings.RunsSpread)
            {
                failed |= await RunSpreadAsync(settings, context, probe, environment, ct);
            }

            if (settings.RunsScale)
            {
                var scaleStarted = DateTimeOffset.UtcNow;
                var startLoad = BenchContext.LoadAverage();
                var results = new ScaleResults();
                await WaitForLockDelayAsync(context, probe, ct);
                int? postmaster = null;
                if (server is not null)
                {
                    await using var connection = await context.OpenDedicatedAsync("bench-info", ct);
                    await using var cmd = new Npgsql.NpgsqlCommand("SELECT pg_catalog.pg_backend_pid()", connection);
                    postmaster = ProcStat.ParentOf((int)(await cmd.ExecuteScalarAsync(ct))!);
                }

                var scale = new ScaleCases(context, server is null ? null : new StatementLog(server.LogFile, connectionString), postmaster, results);
                foreach (var (what, step) in new (string, Func<Task>)[]
                {
                    ("steady-state, 1 singleton", () => scale.SteadyAsync(1, ct)),
                    ($"steady-state, {settings.ScaleSingletons} singletons", () => scale.SteadyAsync(settings.ScaleSingletons, ct)),
                    ("single-singleton baseline", () => scale.SingleAsync(ct)),
                    ($"{settings.ScaleNodes} nodes x {settings.ScaleSingletons} singletons", () => scale.ClusterAsync(ct)),
                })
                {
                    try
                    {
                        await step();
                    }
                    catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
                    {
                        results.Errors.Add($"{what}: {ex.GetType().Name}: {ex.Message}");
                        context.Progress($"{what}: FAILED: {ex.Message}");
                        failed = true;
                    }
                }

                var report = new ScaleReport(settings, environment with { LoadAverageAtStart = startLoad, LoadAverageAtEnd = BenchContext.LoadAverage() }, scaleStarted, DateTimeOffset.UtcNow, results);
                Console.WriteLine();
                Console.WriteLine(report.RenderSummary());
                var path = await report.WriteAsync();
                Console.WriteLine($"Report written to {Path.GetRelativePath(Environment.CurrentDirectory, path)} (with .json and .svg beside it)");
            }

            return failed ? 1 : 0;
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            await Console.Error.WriteLineAsync("Interrupted; no report written.");
            return 130;
        }
        finally
        {
            if (server is not null)
            {
                await server.DisposeAsync();
            }
        }
    }

    /// <summary>The hand-over suite: the existing cases and `highlander run`; writes its Markdown, JSON and SVG.</summary>
    private static async Task<bool> RunHandoverAsync(
        BenchmarkSettings settings, BenchContext context, LockProbe probe, EnvironmentInfo environment, DateTimeOffset started, CancellationToken ct)
    {
        var results = new List<CaseResult>();
        var startLoad = BenchContext.LoadAverage();

        // Graceful hand-overs, interleaved so that background load weighs on each alike.
        await RunGroupAsync(
        [
            settings.Runs("floor-graceful") ? FloorCases.Graceful(context) : null,
            settings.Runs("dl-graceful") ? DistributedLockCases.Graceful(context, watched: true) : null,
            settings.Runs("dl-graceful-unwatched") ? DistributedLockCases.Graceful(context, watched: false) : null,
            settings.Runs("hl-graceful") ? HighlanderCases.Graceful(context) : null,
        ]);

        // Holder crashes, interleaved likewise.
        await RunGroupAsync(
        [
            settings.Runs("floor-crash") ? FloorCases.Crash(context) : null,
            settings.Runs("dl-crash-unwatched") ? DistributedLockCases.Crash(context, watched: false) : null,
            settings.Runs("hl-crash") ? HighlanderCases.Crash(context) : null,
        ]);

        await RunGroupAsync([settings.Runs("hl-cutoff") ? HighlanderCases.CutOff(context) : null]);

        // `highlander run`: its command started directly (the floor), then graceful and crash hand-overs.
        await RunGroupAsync(
        [
            settings.Runs("cli-floor") ? CliCases.Floor(context) : null,
            settings.Runs("cli-graceful") ? CliCases.HandOver(context, graceful: true) : null,
            settings.Runs("cli-crash") ? CliCases.HandOver(context, graceful: false) : null,
        ]);

        // The slow one last: about a minute per iteration.
        await RunGroupAsync([settings.Runs("dl-crash") ? DistributedLockCases.Crash(context, watched: true) : null]);

        environment = environment with { LoadAverageAtStart = startLoad, LoadAverageAtEnd = BenchContext.LoadAverage() };
        var report = new MarkdownReport(settings, environment, started, DateTimeOffset.UtcNow, results);
        Console.WriteLine();
        Console.WriteLine(report.RenderSummary());
        var path = report.DefaultPath(settings.OutPath);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var chart = Path.ChangeExtension(path, ".svg");
        await File.WriteAllTextAsync(chart, report.RenderChart(), CancellationToken.None);
        await File.WriteAllTextAsync(Path.ChangeExtension(path, ".json"), report.RenderJson(), CancellationToken.None);
        await File.WriteAllTextAsync(path, report.Render(Path.GetFileName(chart)), CancellationToken.None);
        Console.WriteLine($"Report written to {Path.GetRelativePath(Environment.CurrentDirectory, path)} (with .json and .svg beside it)");
        return results.Any(r => r.Error is not null);

        async Task RunGroupAsync(BenchCase?[] group)
        {
            var cases = group.OfType<BenchCase>().ToList();
            if (cases.Count == 0)
            {
                return;
            }

            if (cases.Any(c => c.Result.System is HighlanderCases.System or CliCases.System))
            {
                await WaitForLockDelayAsync(context, probe, ct);
            }

            results.AddRange(await context.RunGroupAsync(cases, ct));
        }
    }

    /// <summary>The spread suite: each placement in turn, <c>--spread-runs</c> times; writes its Markdown and JSON.</summary>
    private static async Task<bool> RunSpreadAsync(BenchmarkSettings settings, BenchContext context, LockProbe probe, EnvironmentInfo environment, CancellationToken ct)
    {
        var started = DateTimeOffset.UtcNow;
        var results = new SpreadResults();
        results.Uptime.Add(BenchContext.Uptime());
        await WaitForLockDelayAsync(context, probe, ct);
        var cases = new SpreadCases(context, results);
        var failed = false;
        for (var run = 1; run <= settings.SpreadRuns; run++)
        {
            foreach (var placement in run % 2 == 1 ? new[] { "spread", "firstcomer" } : ["firstcomer", "spread"])
            {
                try
                {
                    await cases.RunAsync(placement, run, ct);
                }
                catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
                {
                    results.Errors.Add($"{placement} #{run}: {ex.GetType().Name}: {ex.Message}");
                    context.Progress($"{placement} #{run}: FAILED: {ex.Message}");
                    failed = true;
                }
            }
        }

        results.Uptime.Add(BenchContext.Uptime());
        var report = new SpreadReport(settings, environment, started, DateTimeOffset.UtcNow, results);
        Console.WriteLine();
        Console.WriteLine(report.RenderSummary());
        var path = await report.WriteAsync();
        Console.WriteLine($"Report written to {Path.GetRelativePath(Environment.CurrentDirectory, path)} (with .json beside it)");
        return failed;
    }

    /// <summary>HighlanderPG takes no lock until the server has been up for LockDelayAfterServerStart (= the lease, 15 s).</summary>
    private static async Task WaitForLockDelayAsync(BenchContext context, LockProbe probe, CancellationToken ct)
    {
        var uptime = await probe.ServerUptimeAsync(ct);
        var needed = new HighlanderOptions().LeaseDuration + TimeSpan.FromSeconds(1);
        if (uptime < needed)
        {
            context.Progress($"Waiting {(needed - uptime).TotalSeconds:0.0} s: HighlanderPG's lock-delay after a server start");
            await Task.Delay(needed - uptime, ct);
        }
    }
}
