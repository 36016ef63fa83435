// A cluster singleton in an ordinary .NET host: run this on several machines (or several times on one) against the
// same database, and the ticker runs on exactly one of them. Configuration comes from the usual places, e.g.
//   Highlander__ConnectionString="Host=...;Username=...;Password=..." dotnet run --project samples/HighlanderPG.Sample
// The tests also use it as a separate node process (a node that is SIGKILLed, whose child will not stop, or whose
// thread pool is starved).
using HighlanderPG;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

var builder = Host.CreateApplicationBuilder(args);
builder.Services.AddHighlander(builder.Configuration.GetSection("Highlander"));
// The name is the singleton's cluster-wide identity (its lock key derives from it): keep it stable across versions, so
// that old and new nodes of a rolling deploy contend for the same key.
builder.Services.AddClusterSingleton<Ticker>("ticker");
await builder.Build().RunAsync();

/// <summary>The singleton: says when it starts and stops (one line each on standard output), and ticks meanwhile.</summary>
internal sealed class Ticker(ILeadership leadership, IConfiguration configuration, ILogger<Ticker> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        Console.WriteLine($"STARTED {leadership.NodeId} epoch={leadership.FencingEpoch?.ToString() ?? "-"}");
        try
        {
            // For the escalation test: a child that will not stop when told to.
            var ignore = configuration.GetValue<bool>("Sample:IgnoreCancellation");

            // For the thread-pool starvation test: once this file exists, every thread-pool thread blocks for good.
            var starveFile = configuration.GetValue<string>("Sample:StarveThreadPoolWhenFileExists");
            var tick = starveFile is null ? TimeSpan.FromSeconds(1) : TimeSpan.FromMilliseconds(50);
            while (ignore || !stoppingToken.IsCancellationRequested)
            {
                if (starveFile is not null && File.Exists(starveFile))
                {
                    StarveThreadPool();
                }

                logger.LogInformation("{Singleton} ticking on {Node}", leadership.Name, leadership.NodeId);
                await Task.Delay(tick, ignore ? CancellationToken.None : stoppingToken).ContinueWith(_ => { }, TaskScheduler.Default);
            }
        }
        finally
        {
            Console.WriteLine($"STOPPED {leadership.NodeId}");
        }
    }

    /// <summary>What sync-over-async does to an application at its worst: no thread-pool work item runs any more.</summary>
    private static void StarveThreadPool()
    {
        ThreadPool.GetMaxThreads(out _, out var io);
        if (!ThreadPool.SetMaxThreads(Environment.ProcessorCount, io))
        {
            Console.Error.WriteLine("could not cap the thread pool");
            Environment.Exit(70);
        }

        for (var i = 0; i < Environment.ProcessorCount; i++)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static _ => Thread.Sleep(Timeout.Infinite), null);
        }

        Console.WriteLine("STARVING");
        Thread.Sleep(Timeout.Infinite); // this thread is one of the pool's too
    }
}
