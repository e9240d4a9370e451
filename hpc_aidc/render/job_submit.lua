--[[ job_submit.lua: the hpc-aidc site policy for slurmctld (JobSubmitPlugins=lua; Lua 5.1 or later).
Rendered by `hpcai admin policy --out job_submit.lua` from the site profile: do not edit here, change the
profile's [policy] table and render again. The same rules, codes and messages are checked by hpcai
before it calls sbatch (hpc_aidc/spec/policy.py); the catalogue of codes is slurm/policy/README.md.
slurmctld reloads this file by itself when it changes (no restart needed once JobSubmitPlugins=lua). ]]

--@SITE@

local UNSET = { [4294967294] = true, [4294967295] = true, [65534] = true, [65535] = true,
                [18446744073709551614] = true, [18446744073709551615] = true }

local function given(v)
  return v ~= nil and v ~= "" and not UNSET[v]
end

local function num(v, default)
  if given(v) and type(v) == "number" then return v end
  return default
end

-- GPUs in a TRES string such as "gres:gpu:h100:2,gres:foo:1" (also "gres/gpu:2", "gpu"): count, type.
local function gpus_in(spec)
  if not given(spec) then return 0, nil end
  local total, kind = 0, nil
  for item in string.gmatch(spec, "[^,]+") do
    local s = string.gsub(item, "^gres[:/]", "")
    local parts = {}
    for p in string.gmatch(s, "[^:]+") do parts[#parts + 1] = p end
    if parts[1] == "gpu" then
      local count = 1
      if #parts >= 3 then
        kind = parts[2]
        count = tonumber(string.match(parts[3], "^%d+")) or 1
      elseif #parts == 2 then
        local n = tonumber(string.match(parts[2], "^%d+$"))
        if n then count = n else kind = parts[2] end
      end
      total = total + count
    end
  end
  return total, kind
end

local function say(name, values)
  local rule = SITE.rules[name]
  local text = string.gsub(rule.template, "{([%w_]+)}", function(k)
    local v = values[k]
    if v == nil then return "{" .. k .. "}" end
    return tostring(v)
  end)
  return rule.code .. ": " .. text
end

-- The request, as hpc_aidc.spec.policy.JobRequest sees it.
local function request(job_desc)
  local nodes = num(job_desc.min_nodes, 1)
  if nodes < 1 then nodes = 1 end
  local per_node, t1 = gpus_in(job_desc.tres_per_node)
  local per_job, t2 = gpus_in(job_desc.tres_per_job)
  local per_task, t3 = gpus_in(job_desc.tres_per_task)
  local tasks_per_node = num(job_desc.ntasks_per_node, nil)
  local tasks = num(job_desc.num_tasks, nil)
  if tasks == nil then tasks = (tasks_per_node or 1) * nodes end
  if tasks_per_node == nil then tasks_per_node = math.ceil(tasks / nodes) end
  local gpus
  if per_job > 0 then gpus = per_job else gpus = per_node * nodes + per_task * tasks end
  local gpus_per_node = per_node
  if gpus_per_node == 0 and gpus > 0 then gpus_per_node = math.ceil(gpus / nodes) end
  local cpt = num(job_desc.cpus_per_task, 1)
  local cpus_per_node = tasks_per_node * cpt
  local cpus = math.max(tasks * cpt, num(job_desc.min_cpus, 0))
  local cpus_per_gpu = select(1, gpus_in(job_desc.cpus_per_tres))
  if cpus_per_gpu > 0 and gpus > 0 then
    cpus = math.max(cpus, cpus_per_gpu * gpus)
    cpus_per_node = math.max(cpus_per_node, cpus_per_gpu * gpus_per_node)
  end
  local mem = num(job_desc.min_mem_per_node, nil)
  local mem_per_cpu = num(job_desc.min_mem_per_cpu, nil)
  if mem == nil and mem_per_cpu ~= nil then mem = mem_per_cpu * cpus_per_node end
  local mem_per_gpu = select(1, gpus_in(job_desc.mem_per_tres))
  if mem == nil and mem_per_gpu > 0 then mem = mem_per_gpu * gpus_per_node end
  return {
    account = job_desc.account, partition = job_desc.partition, qos = job_desc.qos,
    time_given = given(job_desc.time_limit), nodes = nodes, gpus = gpus, gpus_per_node = gpus_per_node,
    gpu_type = t1 or t2 or t3, cpus = cpus, cpus_per_node = cpus_per_node, mem_per_node_mb = mem,
  }
end

-- The first broken rule for one partition, in the order of hpc_aidc.spec.policy.RULES; nil if none.
local function check_partition(req, name)
  local part = SITE.partitions[name]
  if part == nil then return nil end  -- unknown partitions are Slurm's to refuse
  local function impossible(limit, got)
    return say("impossible-request", { limit = limit, partition = name, got = got })
  end
  if req.gpus > 0 and part.gpus_per_node == 0 then
    return say("gpus-on-cpu-partition", { partition = name, gpus = req.gpus, gpu_partitions = SITE.gpu_partitions })
  end
  if req.gpus == 0 and SITE.gpu_only[name] then
    return say("cpu-job-on-gpu-partition", { partition = name, cpu_partitions = SITE.cpu_partitions })
  end
  if req.nodes > part.nodes then return impossible(part.nodes .. " nodes", req.nodes .. " nodes") end
  if req.gpus_per_node > part.gpus_per_node then
    return impossible(part.gpus_per_node .. " GPUs per node", req.gpus_per_node .. " GPUs per node")
  end
  if req.cpus_per_node > part.cpus_per_node then
    return impossible(part.cpus_per_node .. " CPUs per node", req.cpus_per_node .. " CPUs per node")
  end
  if part.mem_per_node_mb > 0 and req.mem_per_node_mb ~= nil and req.mem_per_node_mb > part.mem_per_node_mb then
    return impossible(part.mem_per_node_mb .. " MB of memory per node", req.mem_per_node_mb .. " MB per node")
  end
  if not req.time_given and (SITE.require_time_all or SITE.require_time[name]) then
    return say("time-required", { partition = name, max_time = part.max_time })
  end
  local qos = req.qos
  if not given(qos) then qos = SITE.default_qos end
  local cap = qos and SITE.qos_max_gpus[qos]
  if cap and req.gpus > cap then
    return say("qos-gpu-cap", { max = cap, qos = qos, gpus = req.gpus, others = SITE.qos_others[qos] })
  end
  local gpu_type = req.gpu_type or part.gpu_type
  local caps = gpu_type and SITE.gpu_caps[gpu_type]
  if req.gpus > 0 and caps then
    if caps.max_cpus_per_gpu and req.cpus > caps.max_cpus_per_gpu * req.gpus then
      return say("cpus-per-gpu", { max = caps.max_cpus_per_gpu, gpu_type = gpu_type, cpus = req.cpus, gpus = req.gpus })
    end
    local mem = req.mem_per_node_mb and req.mem_per_node_mb * req.nodes
    if caps.max_mem_per_gpu_mb and mem and mem > caps.max_mem_per_gpu_mb * req.gpus then
      return say("mem-per-gpu", { max = caps.max_mem_per_gpu_mb, gpu_type = gpu_type, mem = mem, gpus = req.gpus })
    end
  end
  return nil
end

-- The verdict for a job_desc: nil (accept) or the one-line message. Also used by the tests, which load
-- this file in a plain Lua interpreter with a stub `slurm` table.
function hpcai_policy_verdict(job_desc, submit_uid)
  if SITE.exempt_uids[submit_uid] then return nil end
  local req = request(job_desc)
  if SITE.require_account and not given(req.account) then return say("account-required", {}) end
  local names = req.partition
  if not given(names) then names = SITE.default_partition end
  if names == nil then return nil end
  for name in string.gmatch(names, "[^,]+") do
    local refusal = check_partition(req, name)
    if refusal then return refusal end
  end
  return nil
end

function slurm_job_submit(job_desc, part_list, submit_uid)
  local ok, verdict = pcall(hpcai_policy_verdict, job_desc, submit_uid)
  if not ok then
    -- A bug here must not stop the cluster's submissions: log it and accept.
    slurm.log_error("hpc-aidc policy: check failed, job accepted: %s", (string.gsub(tostring(verdict), "%c", "?")))
    return slurm.SUCCESS
  end
  if verdict then
    -- the verdict quotes the request (partition, account names as the user typed them): no control
    -- character of theirs may start a line of its own in slurmctld's log
    local logged = string.gsub(verdict, "%c", "?")
    slurm.log_info("hpc-aidc policy: refused a job of uid %s: %s", tostring(submit_uid), logged)
    slurm.log_user("%s", verdict)
    return slurm.ERROR
  end
  return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  return slurm.SUCCESS
end

return slurm.SUCCESS
