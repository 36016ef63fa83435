using System.Reflection;
using System.Runtime.CompilerServices;

namespace HighlanderPG.Cli.Running;

/// <summary>
/// Compiles, on a background thread of low priority, the code a follower runs for the first time when it takes over
/// (the library's acquisition, fencing and incarnation, the CLI's child start): a follower's <c>highlander</c> is a process
/// that has never led, and without this the take-over pays for compiling that code at the moment it matters.
/// </summary>
internal static class CodeWarmUp
{
    public static void Start(params Assembly[] assemblies)
    {
        var thread = new Thread(() => Run(assemblies)) { IsBackground = true, Priority = ThreadPriority.Lowest, Name = "highlander warm-up" };
        thread.Start();
    }

    private static void Run(Assembly[] assemblies)
    {
        foreach (var assembly in assemblies)
        {
            Type[] types;
            try
            {
                types = assembly.GetTypes();
            }
            catch (ReflectionTypeLoadException ex)
            {
                types = [.. ex.Types.OfType<Type>()];
            }

            foreach (var type in types)
            {
                if (type.ContainsGenericParameters)
                {
                    continue;
                }

                foreach (var method in type.GetMethods(BindingFlags.DeclaredOnly | BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic).Cast<MethodBase>()
                    .Concat(type.GetConstructors(BindingFlags.DeclaredOnly | BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)))
                {
                    if (method.IsAbstract || method.ContainsGenericParameters || method.GetMethodBody() is null)
                    {
                        continue;
                    }

                    try
                    {
                        RuntimeHelpers.PrepareMethod(method.MethodHandle);
                    }
                    catch (Exception)
                    {
                        // Some methods cannot be prepared ahead (e.g. they need a generic context); they compile when first called.
                    }
                }
            }
        }
    }
}
