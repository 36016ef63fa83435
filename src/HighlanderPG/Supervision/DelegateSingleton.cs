using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Supervision;

/// <summary>A cluster singleton given as a delegate.</summary>
internal sealed class DelegateSingleton(ILeadership leadership, IServiceProvider services, Func<ILeadership, IServiceProvider, CancellationToken, Task> run) : BackgroundService
{
    protected override Task ExecuteAsync(CancellationToken stoppingToken) => run(leadership, services, stoppingToken);
}
