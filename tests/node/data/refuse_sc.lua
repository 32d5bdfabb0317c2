-- Test configuration: this PACS refuses Secondary Capture objects (Orthanc answers C-STORE status 0xA700).
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.SOPClassUID == '1.2.840.10008.5.1.4.1.1.7' then
    error('Secondary Capture refused by test configuration')
  end
  return true
end
