// A cluster singleton in an ordinary .NET host: run this on several machines (or several times on one) against the
// same database, and the ticker runs on exactly one of them. Configuration comes from the usual places, e.g.
//   Highlander__ConnectionString="Host=...;Username=...;Password=..." dotnet run --project samples/HighlanderPG.Sample
using HighlanderPG;
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
internal sealed class Ticker(ILeadership leadership, ILogger<Ticker> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        Console.WriteLine($"STARTED {leadership.NodeId} epoch={leadership.FencingEpoch?.ToString() ?? "-"}");
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                logger.LogInformation("{Singleton} ticking on {Node}", leadership.Name, leadership.NodeId);
                await Task.Delay(TimeSpan.FromSeconds(1), stoppingToken).ContinueWith(_ => { }, TaskScheduler.Default);
            }
        }
        finally
        {
            Console.WriteLine($"STOPPED {leadership.NodeId}");
        }
    }
}
