using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Benchmarks.Measurement;
using Npgsql;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>What every case needs: the server, the observer, the settings, a seeded random source, progress output.</summary>
internal sealed class BenchContext(string connectionString, BenchmarkSettings settings, LockProbe probe) : IDisposable
{
    /// <summary>How long setting up one iteration (a node starting, a waiter blocking) may take.</summary>
    public static readonly TimeSpan SetupTimeout = TimeSpan.FromSeconds(30);

    private readonly Random _random = new(settings.Seed); // not thread-safe: used under its own lock
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    public string ConnectionString { get; } = connectionString;

    public BenchmarkSettings Settings { get; } = settings;

    public LockProbe Probe { get; } = probe;

    /// <summary>HighlanderPG's lock-session round trips in this process (from its meter).</summary>
    public RoundTripRecorder RoundTrips { get; } = new();

    /// <summary>Distinguishes this run's HighlanderPG namespace from any other's on the same server.</summary>
    public string RunId { get; } = Guid.NewGuid().ToString("N")[..8];

    /// <summary>A dedicated (non-pooled) connection string, tagged with <paramref name="applicationName"/>.</summary>
    public string Dedicated(string applicationName) =>
        new NpgsqlConnectionStringBuilder(ConnectionString) { Pooling = false, ApplicationName = applicationName }.ConnectionString;

    /// <summary>The connection string as a library user would pass it (pooling as given), tagged with <paramref name="applicationName"/>.</summary>
    public string AsGiven(string applicationName) =>
        new NpgsqlConnectionStringBuilder(ConnectionString) { ApplicationName = applicationName }.ConnectionString;

    public async Task<NpgsqlConnection> OpenDedicatedAsync(string applicationName, CancellationToken cancellationToken)
    {
        var connection = new NpgsqlConnection(Dedicated(applicationName));
        await connection.OpenAsync(cancellationToken);
        return connection;
    }

    /// <summary>A fresh advisory lock key (random, so that a leftover from an earlier run cannot interfere).</summary>
    public long NewKey()
    {
        lock (_random)
        {
            return _random.NextInt64(1L << 40, long.MaxValue);
        }
    }

    /// <summary>
    /// A random pause in [0, <paramref name="max"/>) before a fault, so that faults land at random phases of the
    /// node's periodic work (heartbeats) rather than always right after the set-up.
    /// </summary>
    public TimeSpan Dwell(TimeSpan max)
    {
        lock (_random)
        {
            return TimeSpan.FromMilliseconds(_random.NextDouble() * max.TotalMilliseconds);
        }
    }

    public void Dispose() => RoundTrips.Dispose();

    public void Progress(string message) =>
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{_clock.Elapsed:mm\\:ss}] {message}"));

    /// <summary>
    /// Runs the cases of a group interleaved: iteration i of every case, then iteration i + 1, the order rotating each
    /// time, so that whatever else loads the machine meanwhile weighs on every case alike. Warm-up iterations come first
    /// and are not recorded. A failing case is recorded (<see cref="CaseResult.Error"/>) and leaves the rotation; the
    /// others go on.
    /// </summary>
    public async Task<IReadOnlyList<CaseResult>> RunGroupAsync(IReadOnlyList<BenchCase> cases, CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        var live = new List<BenchCase>();
        foreach (var benchCase in cases)
        {
            benchCase.Result.Warmup = benchCase.WarmUp ? Settings.Warmup : 0;
            try
            {
                if (benchCase.SetUp is not null)
                {
                    await benchCase.SetUp(cancellationToken);
                }

                live.Add(benchCase);
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                Fail(benchCase, "set-up", ex);
            }
        }

        foreach (var benchCase in live.Where(c => c.Concurrent).ToList())
        {
            live.Remove(benchCase);
            await RunConcurrentlyAsync(benchCase, cancellationToken);
        }

        var rounds = live.Count == 0 ? 0 : live.Max(c => c.Iterations);
        if (live.Count > 0)
        {
            Progress($"{string.Join(", ", live.Select(c => c.Result.Id))}: {(live.Count > 1 ? "interleaved, " : "")}{live.Max(c => c.Result.Warmup)} warm-up + {rounds} iterations");
        }

        try
        {
            for (var i = -Settings.Warmup; i < rounds; i++)
            {
                var order = live.Where(c => i < c.Iterations && (i >= 0 || c.WarmUp)).ToList();
                order = [.. order.Skip(Mod(i, Math.Max(1, order.Count))), .. order.Take(Mod(i, Math.Max(1, order.Count)))];
                foreach (var benchCase in order)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    var load = LoadAverage();
                    Measured measured;
                    try
                    {
                        measured = await benchCase.Iterate(i, cancellationToken);
                    }
                    catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
                    {
                        Fail(benchCase, $"iteration {i + 1}", ex);
                        live.Remove(benchCase);
                        continue;
                    }

                    var label = i < 0 ? "warm-up" : $"{i + 1}/{benchCase.Iterations}";
                    Progress($"{benchCase.Result.Id} {label}: {Format.Sample(measured.Sample)}");
                    if (i < 0)
                    {
                        continue;
                    }

                    Record(benchCase, measured, load);
                }
            }
        }
        finally
        {
            foreach (var benchCase in cases)
            {
                if (benchCase.TearDown is not null)
                {
                    try
                    {
                        await benchCase.TearDown();
                    }
                    catch (Exception ex)
                    {
                        Progress($"{benchCase.Result.Id}: tear-down failed: {ex.Message}");
                    }
                }
            }
        }

        var elapsed = Stopwatch.GetElapsedTime(started);
        foreach (var benchCase in cases)
        {
            benchCase.Conclude?.Invoke();
            benchCase.Result.GroupElapsed = elapsed;
            benchCase.Result.GroupSize = cases.Count;
        }

        return [.. cases.Select(c => c.Result)];

        static int Mod(int a, int n) => ((a % n) + n) % n;
    }

    private async Task RunConcurrentlyAsync(BenchCase benchCase, CancellationToken cancellationToken)
    {
        Progress($"{benchCase.Result.Id}: {benchCase.Iterations} iterations at once, each up to {Settings.Cap.TotalSeconds:0} s");
        var load = LoadAverage();
        var runs = Enumerable.Range(0, benchCase.Iterations).Select(async i =>
        {
            try
            {
                var measured = await benchCase.Iterate(i, cancellationToken);
                Progress($"{benchCase.Result.Id} {i + 1}/{benchCase.Iterations}: {Format.Sample(measured.Sample)}");
                return measured;
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                Fail(benchCase, $"iteration {i + 1}", ex);
                return null;
            }
        }).ToList();
        foreach (var measured in await Task.WhenAll(runs))
        {
            if (measured is not null)
            {
                Record(benchCase, measured, load);
            }
        }
    }

    private static void Record(BenchCase benchCase, Measured measured, double? load)
    {
        benchCase.Result.Add(measured.Sample);
        if (load is { } l)
        {
            benchCase.Result.AddLoad(l);
        }

        foreach (var (name, milliseconds) in measured.Components)
        {
            benchCase.Result.AddComponent(name, milliseconds);
        }
    }

    /// <summary>The 1-minute load average (<c>/proc/loadavg</c>), or null where there is none.</summary>
    /// <summary>The output of <c>uptime</c> (load averages over 1, 5 and 15 minutes), or why there is none.</summary>
    public static string Uptime()
    {
        try
        {
            using var process = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("uptime") { RedirectStandardOutput = true })!;
            var output = process.StandardOutput.ReadToEnd().Trim();
            process.WaitForExit();
            return output;
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            return "uptime not available: " + ex.Message;
        }
    }

    public static double? LoadAverage()
    {
        try
        {
            var first = File.ReadAllText("/proc/loadavg").Split(' ', 2)[0];
            return double.Parse(first, CultureInfo.InvariantCulture);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }

    private void Fail(BenchCase benchCase, string where, Exception ex)
    {
        benchCase.Result.Error = $"{where}: {ex.GetType().Name}: {ex.Message}";
        Progress($"{benchCase.Result.Id}: FAILED at {benchCase.Result.Error}");
    }
}

/// <summary>One iteration's measurement, and its parts (milliseconds from the same start).</summary>
internal sealed record Measured(Sample Sample, IReadOnlyList<(string Name, double Milliseconds)> Components)
{
    public Measured(Sample sample)
        : this(sample, [])
    {
    }
}
