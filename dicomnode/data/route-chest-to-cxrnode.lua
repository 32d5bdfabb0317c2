-- Orthanc routing rule: forward chest X-ray studies to the CXR reasoning node once they are stable.
--
-- When a study becomes stable (no new instance for Orthanc's "StableAge" seconds), every CR/DX instance of it
-- with BodyPartExamined CHEST, THORAX or empty that has not been forwarded before is sent with C-STORE to the
-- DICOM modality named CXR_NODE_MODALITY (an entry of "DicomModalities" in orthanc.json).
--
-- No loop: the node's results (SR and Secondary Capture "OT" series, sent back by the node's AE, series
-- description starting with "AI CXR reasoning") are never forwarded; each forwarded instance is marked with the
-- metadata "CxrNodeForwarded" (declare it in "UserMetadata"; without it, marks are kept in memory until Orthanc
-- restarts), so a study that changes again (our results arriving, a late image) only forwards new images.
-- Derived objects are never forwarded, whatever CXR_NODE_MODALITIES says: series of modality SR, KO or PR and
-- instances whose SOP class is a Structured Report, Key Object Selection, Secondary Capture or Presentation State.
--
-- Parameters: set these globals in a Lua script listed BEFORE this one in "LuaScripts", or as environment
-- variables of the Orthanc process; defaults in brackets.
--   CXR_NODE_MODALITY   Orthanc modality name of the node                      [CXRNODE]
--   CXR_NODE_AET        the node's AE title (instances it sent are skipped)   [CXRNODE]
--   CXR_NODE_SERIES_PREFIX  series description prefix of the node's results   [AI CXR reasoning]
--   CXR_NODE_MODALITIES     accepted modalities, comma separated              [CR,DX]
--   CXR_NODE_BODY_PARTS     accepted body parts, comma separated ('' = empty)  [CHEST,THORAX,]

local FORWARDED_METADATA = 'CxrNodeForwarded'
local forwardedInMemory = {}

local function setting(name, default)
  local value = rawget(_G, name)
  if value == nil and os ~= nil and os.getenv ~= nil then
    value = os.getenv(name)
  end
  if value == nil then
    return default
  end
  return value
end

local function trim(s)
  return (string.gsub(s or '', '^%s*(.-)%s*$', '%1'))
end

local function listSet(text)
  local set = {}
  for item in string.gmatch(text .. ',', '([^,]*),') do
    set[string.upper(trim(item))] = true
  end
  return set
end

local function startsWith(s, prefix)
  return prefix ~= '' and string.sub(s, 1, string.len(prefix)) == prefix
end

local DERIVED_MODALITIES = { SR = true, KO = true, PR = true }

-- SR (Key Object Selection included), Secondary Capture and Presentation State SOP classes
local function isDerivedClass(sopClass)
  return startsWith(sopClass, '1.2.840.10008.5.1.4.1.1.88.') or startsWith(sopClass, '1.2.840.10008.5.1.4.1.1.11.')
      or sopClass == '1.2.840.10008.5.1.4.1.1.7' or startsWith(sopClass, '1.2.840.10008.5.1.4.1.1.7.')
end

local function metadataNames(instanceId)
  local ok, answer = pcall(RestApiGet, '/instances/' .. instanceId .. '/metadata')
  local names = {}
  if ok and answer ~= nil then
    for _, name in ipairs(ParseJson(answer)) do
      names[name] = true
    end
  end
  return names
end

-- One metadata value of an instance (trimmed), '' when it has none
local function metadataValue(instanceId, names, name)
  if not names[name] then
    return ''
  end
  local ok, answer = pcall(RestApiGet, '/instances/' .. instanceId .. '/metadata/' .. name)
  if ok and answer ~= nil then
    return trim(answer)
  end
  return ''
end

local function markForwarded(instanceId)
  local ok = pcall(RestApiPut, '/instances/' .. instanceId .. '/metadata/' .. FORWARDED_METADATA, '1')
  if not ok then
    forwardedInMemory[instanceId] = true
  end
end

-- The instances of a study that the node should get and has not got yet.
local function instancesToForward(studyId)
  local modalities = listSet(setting('CXR_NODE_MODALITIES', 'CR,DX'))
  local bodyParts = listSet(setting('CXR_NODE_BODY_PARTS', 'CHEST,THORAX,'))
  local nodeAet = trim(setting('CXR_NODE_AET', 'CXRNODE'))
  local ourPrefix = setting('CXR_NODE_SERIES_PREFIX', 'AI CXR reasoning')
  local selected = {}
  for _, series in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    local tags = series['MainDicomTags'] or {}
    local modality = string.upper(trim(tags['Modality']))
    local bodyPart = string.upper(trim(tags['BodyPartExamined']))
    local description = trim(tags['SeriesDescription'])
    if modalities[modality] and not DERIVED_MODALITIES[modality] and bodyParts[bodyPart]
        and not startsWith(description, ourPrefix) then
      for _, instanceId in ipairs(series['Instances']) do
        local names = metadataNames(instanceId)
        if not names[FORWARDED_METADATA] and not forwardedInMemory[instanceId]
            and metadataValue(instanceId, names, 'RemoteAET') ~= nodeAet
            and not isDerivedClass(metadataValue(instanceId, names, 'SopClassUid')) then
          table.insert(selected, instanceId)
        end
      end
    end
  end
  return selected
end

function OnStableStudy(studyId, tags, metadata)
  local target = setting('CXR_NODE_MODALITY', 'CXRNODE')
  local instances = instancesToForward(studyId)
  if #instances == 0 then
    return
  end
  local body = DumpJson({ Resources = instances, Synchronous = true }, true)
  local ok, err = pcall(RestApiPost, '/modalities/' .. target .. '/store', body)
  if ok then
    for _, instanceId in ipairs(instances) do
      markForwarded(instanceId)
    end
    print('cxr-node route: forwarded ' .. #instances .. ' instance(s) of study ' .. studyId .. ' to ' .. target)
  else
    print('cxr-node route: FAILED to forward study ' .. studyId .. ' to ' .. target .. ': ' .. tostring(err))
  end
end
