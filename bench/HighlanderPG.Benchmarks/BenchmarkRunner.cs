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
                server = await LocalPostgresServer.StartAsync(cancellationToken: cancel.Token);
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

            var results = new List<CaseResult>();
            var ct = cancel.Token;
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

            // The slow one last: about a minute per iteration.
            await RunGroupAsync([settings.Runs("dl-crash") ? DistributedLockCases.Crash(context, watched: true) : null]);

            async Task RunGroupAsync(BenchCase?[] group)
            {
                var cases = group.OfType<BenchCase>().ToList();
                if (cases.Count == 0)
                {
                    return;
                }

                if (cases.Any(c => c.Result.System == HighlanderCases.System))
                {
                    // HighlanderPG takes no lock until the server has been up for LockDelayAfterServerStart (= the lease, 15 s).
                    var uptime = await probe.ServerUptimeAsync(ct);
                    var needed = new HighlanderOptions().LeaseDuration + TimeSpan.FromSeconds(1);
                    if (uptime < needed)
                    {
                        context.Progress($"Waiting {(needed - uptime).TotalSeconds:0.0} s: HighlanderPG's lock-delay after a server start");
                        await Task.Delay(needed - uptime, ct);
                    }
                }

                results.AddRange(await context.RunGroupAsync(cases, ct));
            }

            environment = environment with { LoadAverageAtStart = startLoad, LoadAverageAtEnd = BenchContext.LoadAverage() };
            var report = new MarkdownReport(settings, environment, started, DateTimeOffset.UtcNow, results);
            Console.WriteLine();
            Console.WriteLine(report.RenderSummary());
            var path = report.DefaultPath(settings.OutPath);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            await File.WriteAllTextAsync(path, report.Render(), CancellationToken.None);
            Console.WriteLine($"Report written to {Path.GetRelativePath(Environment.CurrentDirectory, path)}");
            return results.Any(r => r.Error is not null) ? 1 : 0;
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
}
